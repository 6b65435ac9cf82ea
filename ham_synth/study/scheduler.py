"""Independent study runs side by side, one per slot (`study.parallel_runs`), each a separate
process pinned to one GPU by `CUDA_VISIBLE_DEVICES=<slot>`, its output in W/logs/<run>.log.

A run starts once every run it depends on has finished; a failed run is reported, its dependents
are not started, and the runs that do not depend on it go on. Simulated CPU devices cannot be
split across processes, so the tests drive this with a fake launcher.
"""

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Protocol

from ham_synth.study import plan as plan_lib

# Compilations at least this long go to the shared persistent cache (JAX's default, 1 s, would
# leave out most of a small model's, which the seeds and conditions then compile again).
CACHE_MIN_COMPILE_SECONDS = 0.1


class Handle(Protocol):
    """What `launch` returns (subprocess.Popen is one)."""

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Launch = Callable[[plan_lib.Run, int], Handle]


def subprocess_launcher(root: pathlib.Path, cache_dir: str = "") -> Launch:
    """Starts `run`'s command as `python -m ham_synth.main ...` on GPU `slot` (of those
    CUDA_VISIBLE_DEVICES already lists, if set), sharing the compilation cache `cache_dir`; its
    output is appended to W/logs/<run>.log."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = [g for g in visible.split(",") if g] or None

    def launch(run: plan_lib.Run, slot: int) -> subprocess.Popen:
        log = root / "logs" / f"{run.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if gpus is not None and slot >= len(gpus):
            raise ValueError(
                f"study.parallel_runs asks for slot {slot}, but CUDA_VISIBLE_DEVICES={visible} "
                f"lists {len(gpus)} GPU(s); lower study.parallel_runs."
            )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpus[slot] if gpus else str(slot)}
        if cache_dir:
            env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(CACHE_MIN_COMPILE_SECONDS)
        argv = [sys.executable, "-m", "ham_synth.main", *run.command(root)[1:]]
        with open(log, "a") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    return launch


def schedule(
    runs: list[plan_lib.Run],
    done: set[str],
    launch: Launch,
    slots: int,
    *,
    on_start: Callable[[plan_lib.Run, int], None] = lambda run, slot: None,
    on_finish: Callable[[plan_lib.Run], None] = lambda run: None,
    poll_seconds: float = 2.0,
) -> tuple[dict[str, int], list[str]]:
    """Runs `runs` (in plan order) on `slots` slots; `done` names the runs already finished.
    Returns ({failed run: exit status}, [runs not started because a dependency failed])."""
    pending = list(runs)
    running: dict[int, tuple[plan_lib.Run, Handle]] = {}
    failed: dict[str, int] = {}
    finished = set(done)
    try:
        while True:
            for slot in range(slots):
                if slot in running:
                    continue
                ready = next((r for r in pending if all(d in finished for d in r.deps)), None)
                if ready is None:
                    break
                pending.remove(ready)
                on_start(ready, slot)
                running[slot] = (ready, launch(ready, slot))
            if not running:  # Nothing left, or only runs behind a failure.
                return failed, [r.name for r in pending]
            time.sleep(poll_seconds)
            for slot, (run, handle) in list(running.items()):
                status = handle.poll()
                if status is None:
                    continue
                del running[slot]
                if status == 0:
                    finished.add(run.name)
                    on_finish(run)
                else:
                    failed[run.name] = status
    finally:  # Interrupted (SIGTERM, Ctrl-C, an error): stop the runs; training checkpoints.
        for _, handle in running.values():
            handle.terminate()
        for _, handle in running.values():
            handle.wait()
