"""Runs a study's plan: skips finished runs, resumes interrupted ones, reruns changed ones.

Each run leaves a marker, W/markers/<run name>.json, with its key (plan.py), its command, and
whether it finished. On the next invocation a run whose marker says done with the same key is
skipped; one that started with the same key resumes (training from its last checkpoint, `sample`
from the images it wrote); one whose key changed is refused, naming what changed, unless
`rerun_changed`, which keeps it in W/replaced/ and runs it afresh (a moved data file would
otherwise cost every run). W/study.lock keeps a second study from writing the same workdir.
"""

import pathlib
import shlex
import shutil
import time
from collections.abc import Callable

import jax
import ml_collections

from ham_synth import config_lib, evaluate, fileio, memorization, predict, synthesize, train
from ham_synth.evaluators import inception
from ham_synth.study import markers, report, scheduler
from ham_synth.study import plan as plan_lib

# W/replaced/<run name>/<its old key>/: runs redone under --rerun_changed, kept.
REPLACED = "replaced"

DONE, RESUME, CHANGED, NEW = "done", "resume", "changed", "new"


class StudyError(RuntimeError):
    """A run of the study did not finish; the message says which and how to go on."""


class RunFailed(StudyError):
    """Runs launched side by side exited with an error."""


LOCK = "study.lock"


def write_marker(root: pathlib.Path, run: plan_lib.Run, **fields) -> None:
    command = plan_lib.shell_command(run, root)
    markers.write(root, run.name, key=run.key, command=command, **fields)


def status(root: pathlib.Path, run: plan_lib.Run) -> str:
    """done | resume (started, same key) | changed (its inputs changed) | new."""
    marker = markers.read(root, run.name)
    if marker is None:
        return NEW
    if marker["key"] != run.key:
        return CHANGED
    return DONE if marker.get("done") else RESUME


def what_changed(root: pathlib.Path, run: plan_lib.Run) -> str:
    """The arguments of a changed run's command that differ from its marker's, or that a run it
    reads changed."""
    old = shlex.split(markers.read(root, run.name)["command"])
    new = run.command(root)
    gone, came = [a for a in old if a not in new], [a for a in new if a not in old]
    if not (gone or came):
        return f"{run.name}: a run it reads changed"
    return f"{run.name}: {' '.join(gone) or '(none)'} -> {' '.join(came) or '(none)'}"


def keep_replaced(root: pathlib.Path, run: plan_lib.Run) -> pathlib.Path | None:
    """Moves a changed run's folder to W/replaced/<name>/<old key>; returns where (None if the
    run left no folder)."""
    if not (root / run.name).exists():
        return None
    target = root / REPLACED / run.name / markers.read(root, run.name)["key"]
    shutil.rmtree(target, ignore_errors=True)  # The same old key redone twice: keep the last.
    target.parent.mkdir(parents=True, exist_ok=True)
    (root / run.name).rename(target)
    return target


def select(plan: list[plan_lib.Run], only: str, run_name: str = "") -> list[plan_lib.Run]:
    """The runs of the stages `only` names (comma-separated; empty: all), or the one run named."""
    if run_name:
        if only:
            raise ValueError("--run names one run; drop --only.")
        chosen = [r for r in plan if r.name == run_name]
        if not chosen:
            raise ValueError(
                f"--run={run_name!r} is not a run of this study; --dry_run lists them."
            )
        return chosen
    stages = [s.strip() for s in only.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(plan_lib.STAGES))
    if unknown:
        raise ValueError(f"--only names {unknown}; the stages are {list(plan_lib.STAGES)}.")
    return [r for r in plan if not stages or r.stage in stages]


def format_plan(plan: list[plan_lib.Run], selected: list[plan_lib.Run], root) -> str:
    """The plan as a table: stage, run, status, command."""
    chosen = {r.name for r in selected}
    lines = [f"Study plan for {root} ({len(selected)} of {len(plan)} runs selected):"]
    for run in plan:
        state = status(root, run) if run.name in chosen else "not selected"
        command = (
            "ham-synth study ... --only=report" if run.verb == "report" else
            plan_lib.shell_command(run, root)
        )  # fmt: skip
        lines.append(f"  {run.stage:11s} {run.name:36s} {state:12s} {command}")
    return "\n".join(lines)


def execute(run: plan_lib.Run, root: pathlib.Path, study: ml_collections.ConfigDict, plan) -> None:
    """Makes one run in this process, as its command would."""
    flags = {k: plan_lib.resolve(v, root) for k, v in run.flags.items()}
    if run.verb == "train":  # A stop (SIGTERM) raises train.TrainingStopped: not done.
        train.run(run.resolved_config(root), flags["workdir"])
    elif run.verb == "sample":
        synthesize.run(**{k.removeprefix(config_lib.SAMPLE_SETTING): v for k, v in flags.items()})
    elif run.verb == "evaluate":
        evaluate.evaluate(config=run.resolved_config(root), **flags)
    elif run.verb == "classify":
        predict.run(**flags)
    elif run.verb == "memorization":
        memorization.run(config=run.resolved_config(root), **flags)
    elif run.verb == "report":
        report.write_report(study, plan, root)
    else:
        raise ValueError(f"Unknown verb {run.verb!r} in the study plan.")


def _eta(durations: dict[str, list[float]], pending: list[plan_lib.Run]) -> str:
    """Remaining time from the mean duration of finished runs of each stage (or of all)."""
    everything = [s for seconds in durations.values() for s in seconds]
    if not everything:
        return "ETA unknown until a run finishes"
    total = 0.0
    for run in pending:
        seconds = durations.get(run.stage) or everything
        total += sum(seconds) / len(seconds)
    untimed = sorted({r.stage for r in pending} - set(durations), key=plan_lib.STAGES.index)
    guess = f" (guessing {', '.join(untimed)} from the runs so far)" if untimed else ""
    return f"ETA {total / 60:.1f} min{guess}"


def compilation_cache(config: ml_collections.ConfigDict) -> str:
    """study.compilation_cache, else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/ham_synth/jax."""
    return (
        config.study.compilation_cache
        or jax.config.jax_compilation_cache_dir
        or str(inception.default_cache_dir() / "jax")
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    only: str = "",
    dry_run: bool = False,
    run: str = "",
    rerun_changed: bool = False,
):
    """The `study` verb. Its runs share JAX's persistent compilation cache, so the seeds and
    conditions of one classifier compile once. `run` makes that one run only (its dependencies
    must be done), as launch/sweep.py's SLURM array tasks do."""
    cache = compilation_cache(config)
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", scheduler.CACHE_MIN_COMPILE_SECONDS
    )
    if config.study.parallel_runs > 1:  # The runs own the GPUs; this process only reports.
        jax.config.update("jax_platforms", "cpu")
    return run_study(
        config,
        pathlib.Path(workdir).resolve(),
        only=only,
        dry_run=dry_run,
        run_name=run,
        rerun_changed=rerun_changed,
    )


class _Book:
    """Markers, durations and progress lines for one invocation's runs."""

    def __init__(self, root: pathlib.Path, plan: list[plan_lib.Run], todo: list[plan_lib.Run]):
        self.root, self.todo = root, todo
        self.made: list[plan_lib.Run] = []
        self.durations: dict[str, list[float]] = {}
        for marker in (markers.read(root, r.name) for r in plan):
            if marker and marker.get("done"):
                self.durations.setdefault(marker["stage"], []).append(marker["seconds"])
        self.start = time.perf_counter()
        self.started: dict[str, float] = {}

    def begin(self, run: plan_lib.Run, slot: int | None = None) -> None:
        """Prints the progress line, clears what cannot be resumed, marks the run started."""
        state = status(self.root, run)
        stage_index = plan_lib.STAGES.index(run.stage) + 1
        remaining = [r for r in self.todo if r.name not in self.started]
        where = f" on GPU {slot}" if slot is not None else ""
        elapsed = (time.perf_counter() - self.start) / 60
        print(
            f"[study] stage {stage_index}/{len(plan_lib.STAGES)} {run.stage} | run "
            f"{len(self.started) + 1}/{len(self.todo)} {run.name} ({state}){where} | elapsed "
            f"{elapsed:.1f} min | {_eta(self.durations, remaining)}",
            flush=True,
        )
        if state == CHANGED and run.verb == "report":  # Derived from the runs alone.
            shutil.rmtree(self.root / run.name, ignore_errors=True)
        elif state == CHANGED and (kept := keep_replaced(self.root, run)):
            print(f"[study] {run.name}: the earlier run is kept in {kept}", flush=True)
        write_marker(self.root, run, stage=run.stage, done=False)
        self.started[run.name] = time.perf_counter()

    def finish(self, run: plan_lib.Run) -> None:
        seconds = time.perf_counter() - self.started[run.name]
        write_marker(self.root, run, stage=run.stage, done=True, seconds=seconds)
        self.durations.setdefault(run.stage, []).append(seconds)
        self.made.append(run)


def run_study(
    study: ml_collections.ConfigDict,
    root: pathlib.Path,
    *,
    only: str = "",
    dry_run: bool = False,
    executor: Callable = execute,
    launcher: scheduler.Launch | None = None,
    poll_seconds: float = 2.0,
    run_name: str = "",
    rerun_changed: bool = False,
) -> list[plan_lib.Run]:
    """Makes every selected run that is not done; returns the runs it made. With
    `study.parallel_runs` > 1 the runs other than the report are launched as processes, one per
    GPU (`launcher`; default: scheduler.subprocess_launcher)."""
    plan = plan_lib.make_plan(study, root)
    selected = select(plan, only, run_name)
    print(format_plan(plan, selected, root), flush=True)
    if dry_run:
        return []
    # One run (a SLURM array task) locks only itself, so the stage's runs go side by side.
    lock = f"{markers.FOLDER}/{run_name}.lock" if run_name else LOCK
    with fileio.exclusive_lock(root / lock, "study"):
        names = {r.name for r in selected}
        states = {r.name: status(root, r) for r in plan}  # One marker read per run.
        done = {name for name, state in states.items() if state == DONE}
        todo = [r for r in selected if r.name not in done]
        changed = [r for r in todo if r.verb != "report" and states[r.name] == CHANGED]
        if changed and not rerun_changed:
            shown = "\n  ".join(what_changed(root, r) for r in changed[:5])
            raise StudyError(
                f"{len(changed)} run(s) of this workdir ran with other inputs, e.g.\n  {shown}\n"
                "Undo the change (a moved data file: put it back or link it), or pass "
                f"--rerun_changed to redo them, keeping the earlier ones in {root / REPLACED}."
            )
        missing = sorted({d for r in todo for d in r.deps if d not in names} - done)
        if missing:
            asked = f"--run={run_name}" if run_name else f"--only={only}"
            raise ValueError(
                f"{asked}: these runs are needed first and are not done: {missing}; run "
                "them (or their stages) first."
            )
        book = _Book(root, plan, todo)
        if study.study.parallel_runs > 1:
            side_by_side = [r for r in todo if r.verb != "report"]
            failed, blocked = scheduler.schedule(
                side_by_side,
                done,
                launcher or scheduler.subprocess_launcher(root, compilation_cache(study)),
                study.study.parallel_runs,
                on_start=book.begin,
                on_finish=book.finish,
                poll_seconds=poll_seconds,
            )
            if failed:
                raise RunFailed(
                    f"{len(failed)} run(s) failed: "
                    + ", ".join(
                        f"{n} (exit {s}; log {root / 'logs' / n}.log)" for n, s in failed.items()
                    )
                    + (f"; not started, as they depend on them: {blocked}" if blocked else "")
                    + ". Rerun the study to retry them; finished runs are kept."
                )
            todo = [r for r in todo if r.verb == "report"]
        for run in todo:
            book.begin(run)
            executor(run, root, study, plan)
            book.finish(run)
    skipped = len(selected) - len(book.made)
    print(f"[study] done: {len(book.made)} run(s) made, {skipped} already done.")
    if (root / report.REPORT_MD).exists():
        print(f"Report: {root / report.REPORT_MD}")
    return book.made
