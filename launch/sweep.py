"""Expands a config's sweep into single runs; runs them locally, one per GPU, or writes a SLURM
submission that runs each through launch/slurm.sbatch (the project's one SLURM template).

    # A study (its config's `sweep` field, and every run of every point):
    python launch/sweep.py --config=configs/study.py:quickstart --workdir=runs/study --dry_run
    # Any training config, with the sweep given here:
    python launch/sweep.py --config=configs/vit.py:quickstart --workdir=runs/lr \\
        --sweep="optim.lr=1e-3,3e-4;seed=0,1" --mode=slurm

--mode=local runs them on this machine's GPUs, one run per GPU (--gpus), dependencies first,
through the study's scheduler. --mode=slurm writes WORKDIR/slurm/: one commands file per stage
(a training sweep has one stage) and submit.sh, which submits each stage as a job array of
launch/slurm.sbatch with --dependency=afterok on the stage before. --dry_run prints the runs
(and, for slurm, submit.sh) and starts nothing.
"""

import pathlib
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from ham_synth import config_lib
from ham_synth.study import plan as plan_lib
from ham_synth.study import runner, scheduler

config_flags.DEFINE_config_file("config", None, "A config file and variant.", lock_config=True)
flags.DEFINE_string("workdir", None, "Where the runs go (one folder per run).")
flags.DEFINE_string("sweep", "", 'Non-study configs: "FIELD=v1,v2;FIELD=v1,v2".')
flags.DEFINE_enum("mode", "local", ["local", "slurm"], "Run here, one per GPU, or write SLURM.")
flags.DEFINE_integer("gpus", 1, "--mode=local: runs side by side, one per GPU.")
flags.DEFINE_integer("gpus_per_run", 1, "--mode=slurm: GPUs each array task asks for.")
flags.DEFINE_bool("dry_run", False, "Print the runs (and the SLURM submission) only.")
flags.mark_flags_as_required(["config", "workdir"])

SBATCH = pathlib.Path(__file__).resolve().parent / "slurm.sbatch"


def is_study(config) -> bool:
    return "generators" in config and "classifier" in config


def training_runs(config, spec: str, sweep: str, overrides: dict) -> list[plan_lib.Run]:
    """One `train` run per point of `sweep` over `config`'s fields, in WORKDIR/<point>, each
    with the command line's --config overrides too."""
    runs = []
    for label, values in plan_lib.sweep_points(sweep, config):
        folder = label or "run"
        runs.append(
            plan_lib.Run(folder, "train", "train", {"workdir": f"$W/{folder}"}, spec,
                         {**overrides, **values}, base_name=folder)
        )  # fmt: skip
    return runs


def stages(runs: list[plan_lib.Run]) -> list[tuple[str, list[plan_lib.Run]]]:
    """The runs grouped by stage, in order, and each stage split into levels (`conditions`,
    `conditions_2`, ...) so that a group's runs depend only on earlier groups: a SLURM job array
    starts a group's runs side by side (a study's pre-training before its fine-tuning)."""
    stage_order = list(dict.fromkeys(run.stage for run in runs))
    stage_of = {run.name: run.stage for run in runs}
    level: dict[str, int] = {}
    grouped: dict[tuple[str, int], list] = {}
    for run in runs:  # Plan order: a run's dependencies come before it.
        same_stage = [level[d] + 1 for d in run.deps if stage_of.get(d) == run.stage]
        level[run.name] = max(same_stage, default=0)
        grouped.setdefault((run.stage, level[run.name]), []).append(run)
    ordered = sorted(grouped, key=lambda key: (stage_order.index(key[0]), key[1]))
    return [(f"{stage}_{n + 1}" if n else stage, grouped[stage, n]) for stage, n in ordered]


def slurm_submission(
    runs, root: pathlib.Path, study_argv: list[str] | None, gpus_per_run: int = 1
) -> dict[str, str]:
    """{file name: content} for WORKDIR/slurm/: a commands file per stage and submit.sh. A
    study's runs go through `ham-synth study ... --run=NAME` (`study_argv`), so each leaves its
    marker, and a last job writes the report. Jobs start in this script's working directory,
    where the commands' relative config paths resolve, as they did here."""

    def command(run: plan_lib.Run) -> str:
        if study_argv:
            return shlex.join([*study_argv, f"--run={run.name}"])
        return plan_lib.shell_command(run, root)

    files = {}
    logs = shlex.quote(str(root / "slurm" / "%x-%A_%a.out"))  # Not where the jobs start.
    lines = ["#!/usr/bin/env bash", "# Submits each stage as a job array; each waits for the last.",
             "set -euo pipefail", "# Jobs start where sbatch runs: where the config paths resolve.",
             f"cd {shlex.quote(str(pathlib.Path.cwd()))}", "previous=''"]  # fmt: skip
    for stage, members in stages(runs):
        name = f"{stage}.commands"
        files[name] = "".join(command(r) + "\n" for r in members)
        commands = shlex.quote(str(root / "slurm" / name))
        lines += [
            f"# {stage}: {len(members)} run(s)",
            f"previous=$(sbatch --parsable --job-name=ham_synth_{stage} "
            f"--array=0-{len(members) - 1} --gpus-per-node={gpus_per_run} --output={logs} "
            f"${{previous:+--dependency=afterok:$previous}} {shlex.quote(str(SBATCH))} "
            f"--commands={commands})",
            'echo "submitted $previous"',
        ]
    if study_argv:
        report = shlex.join([*study_argv, "--only=report"])
        lines += [
            "# report: the study's tables from the runs above",
            f"sbatch --dependency=afterok:$previous --output={logs} --wrap={shlex.quote(report)}",
        ]
    files["submit.sh"] = "\n".join(lines) + "\n"
    return files


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config
    spec = flags.FLAGS["config"].config_filename
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    root = pathlib.Path(flags.FLAGS.workdir).resolve()
    study_argv = None
    if is_study(config):
        if flags.FLAGS.sweep:
            raise app.UsageError("A study's sweep is its config's `sweep` field; drop --sweep.")
        runs = [r for r in plan_lib.make_plan(config, root) if r.verb != "report"]
        study_argv = [
            "ham-synth", "study", f"--config={spec}",
            *[f"--config.{k}={plan_lib.format_value(v)}" for k, v in overrides.items()],
            f"--workdir={root}",
        ]  # fmt: skip
    else:
        runs = training_runs(config, spec, flags.FLAGS.sweep, overrides)
    for stage, members in stages(runs):
        print(f"# {stage}: {len(members)} run(s)")
        for run in members:
            print(plan_lib.shell_command(run, root))
    if flags.FLAGS.mode == "slurm":
        files = slurm_submission(runs, root, study_argv, flags.FLAGS.gpus_per_run)
        if flags.FLAGS.dry_run:
            print(files["submit.sh"], end="")
            return
        folder = root / "slurm"
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_text(content)
        print(f"Wrote {folder}; submit with: bash {folder / 'submit.sh'}")
        return
    if flags.FLAGS.dry_run:
        return
    if flags.FLAGS.gpus < 1:
        raise app.UsageError(f"--gpus={flags.FLAGS.gpus}; run on at least one.")
    if is_study(config):
        config = config_lib.with_values(config, {"study.parallel_runs": flags.FLAGS.gpus})
        runner.run(config, str(root))
        return
    failed, _ = scheduler.schedule(runs, set(), scheduler.subprocess_launcher(root),
                                   flags.FLAGS.gpus)  # fmt: skip
    if failed:
        sys.exit(f"Failed: {failed}; logs in {root / 'logs'}.")


if __name__ == "__main__":
    app.run(main)
