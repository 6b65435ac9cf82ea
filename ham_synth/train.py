"""The one train loop every model family uses: mesh, state, jitted step, logging, checkpoints and
evaluators. A family only supplies a Task (tasks/base.py) and its evaluators' config entries."""

import contextlib
import pathlib
import signal
import threading
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ham_synth import (
    checkpoint,
    config_lib,
    environment,
    evaluators,
    fileio,
    parallel,
    run_config,
)
from ham_synth import metric_writer as metric_writer_lib
from ham_synth import workdir as workdir_lib
from ham_synth.tasks import base

LOCK_FILE = "train.lock"


class TrainingStopped(Exception):
    """Training checkpointed and stopped before train.total_steps (SIGTERM, preemption); a rerun
    resumes it."""


def run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    allow_config_change: bool = False,
):
    """The `train` verb: train_and_evaluate, raising TrainingStopped when it stopped early, so a
    caller (the command's exit status, the study) never takes a stopped run for a finished one."""
    state = train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
    if int(state.step) < config.train.total_steps:
        raise TrainingStopped(
            f"{workdir} stopped at step {int(state.step)} of {config.train.total_steps}; rerun "
            "the same command to resume it from that checkpoint."
        )
    return state


class NonFiniteLossError(FloatingPointError):
    """A train/* scalar became NaN or inf; the message names it, the step range and the last
    checkpoint."""


def make_train_step(task: base.Task, mesh: jax.sharding.Mesh):
    """task.train_step under jit: batch sharded over `data`, state replicated and donated."""
    replicated = parallel.replicated(mesh)
    return jax.jit(
        task.train_step,
        in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


@jax.jit
def _accumulate(total, metrics):
    return jax.tree.map(jnp.add, total, metrics)


class _StopRequest:
    """Records SIGTERM (preemption, `kill`) and SIGINT (Ctrl-C) so the loop can checkpoint and
    exit cleanly; a second Ctrl-C interrupts at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        # With several processes, JAX's preemption notifier (installed by
        # jax.distributed.initialize) must keep SIGTERM: a Python handler would replace it.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        logging.warning(
            "Received %s: checkpointing and stopping (Ctrl-C again to interrupt at once).",
            signal.Signals(signum).name,
        )
        self.requested = True

    def should_stop(self, step: int) -> bool:
        # With several hosts, all must stop at the same step; JAX's preemption service agrees on it.
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def check_finite(means: dict[str, float], step: int, last_good_step: int, ckpt) -> None:
    """Raises naming every non-finite `train/*` scalar, the steps where it broke, and the last
    checkpoint, which a rerun resumes from."""
    bad = {k: v for k, v in means.items() if k.startswith("train/") and not np.isfinite(v)}
    if not bad:
        return
    last_ckpt = ckpt.latest_step()
    where = (
        f"the last checkpoint is step {last_ckpt} in {ckpt.directory}; rerunning resumes from it"
        if last_ckpt is not None
        else "no checkpoint was saved"
    )
    named = ", ".join(f"{k} is {v}" for k, v in sorted(bad.items()))
    raise NonFiniteLossError(
        f"{named} at step {step}: non-finite after step {last_good_step} "
        f"(steps {last_good_step + 1}..{step}). Training stopped; {where}. Try a lower optim.lr "
        f"or optim.grad_clip."
    )


def evaluate_best(entries, config, abstract_state, ckpt_dir, writer, step: int) -> None:
    """Runs the `checkpoint="best"` entries on the checkpoint train.best kept, restored the way
    `ham-synth evaluate --step=best` restores it; logs them at `step` with the step they used
    as `<name>/checkpoint_step`."""
    best = config.train.best
    state, best_step = checkpoint.restore_state(
        ckpt_dir, abstract_state, "best", best_metric=best.metric, best_mode=best.mode
    )
    row = {}
    for entry in entries:
        logging.info(
            "evals.%s: the best checkpoint by %s, step %d of %d.",
            entry.name,
            best.metric,
            best_step,
            step,
        )
        scalars, images = evaluators.run_entry(entry, state, best_step)
        row.update(scalars, **{f"{entry.name}/checkpoint_step": best_step})
        for image_name, image in images.items():
            writer.write_image(step, f"{entry.name}/{image_name}", image)
    writer.write_scalars(step, row)
    writer.write_curves()


def best_logged(entries, workdir: pathlib.Path, step: int) -> bool:
    """Whether metrics.jsonl holds `evaluate_best`'s results at `step` for every entry (a run
    extended past an earlier end evaluates its best checkpoint again)."""
    rows = [row for row in metric_writer_lib.read_metrics(workdir) if row["step"] == step]
    logged = set().union(*rows)
    return all(f"{entry.name}/checkpoint_step" in logged for entry in entries)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    allow_config_change: bool = False,
):
    """Trains `config.task` to `config.train.total_steps`, resuming from `workdir` if it holds a
    checkpoint (with the same config, but for run_config.RESUMABLE_FIELDS, unless
    `allow_config_change`), and runs the evaluators of `config.evals` on their schedule. Returns
    the final TrainState. A second run on the same workdir fails at once."""
    workdir = pathlib.Path(workdir)
    # Process 0 holds the lock for the whole (multi-host) job.
    with (
        fileio.exclusive_lock(workdir / LOCK_FILE, "training run")
        if jax.process_index() == 0
        else contextlib.nullcontext()
    ):
        return _train_and_evaluate(config, workdir, allow_config_change)


def _train_and_evaluate(config, workdir: pathlib.Path, allow_config_change: bool):
    total_steps = config.train.total_steps

    # --- Setup ---
    config_lib.check_train_fields(config.train)
    mesh = parallel.make_mesh(config.train.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    logging.info(
        "Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count()
    )
    # One root rng; fold_in(step) below makes a resumed run draw the same noise.
    init_rng, loop_rng = jax.random.split(jax.random.key(config.seed))

    # --- Data, task and state shapes ---
    # The data fills in data.num_classes and class_names; config.json records them, so
    # workdir.load rebuilds this task without the data.
    built = workdir_lib.build(config, mesh)
    config = built.config
    train_iter = iter(built.dataset)
    train_step = make_train_step(built.task, mesh)

    # --- Evaluators: built now, so a missing input fails before any step ---
    entries = evaluators.from_config(config, built.task, mesh, workdir)
    best = config.train.best
    on_best = [entry for entry in entries if entry.checkpoint == "best"]  # Run after the loop.
    entries = [entry for entry in entries if entry.checkpoint != "best"]
    evaluators.check_metric(best.metric, entries)  # One that runs in the loop ranks checkpoints.

    # --- Checkpointing: resume > init_from > external weights > random (workdir.py) ---
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        every_steps=config.train.ckpt_every_steps,
        keep=config.train.keep_checkpoints,
        best_metric=best.metric,
        best_mode=best.mode,
    )
    resuming_from = ckpt.latest_step()
    changed = {}
    if resuming_from is not None:
        changed = run_config.check_resume(
            workdir, config, allow_config_change, built.task.init_fields
        )
    if jax.process_index() == 0:
        run_config.record(workdir, config, resuming_from, changed)
        environment.write(workdir)
    state, first_step = ckpt.restore_or_init(
        built.abstract_state,
        train_iter,
        lambda: workdir_lib.initial_state(built, init_rng, mesh),
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "Task %r with %s parameters; steps %d..%d; evaluators %s.",
        config.task,
        f"{num_params:,}",
        first_step + 1,
        total_steps,
        {e.name: e.every_steps for e in entries} | {e.name: "end, best" for e in on_best},
    )

    # --- Loop ---
    writer = metric_writer_lib.MetricWriter(workdir, first_step=first_step, total_steps=total_steps)
    window, window_steps = None, 0  # On-device sum of metrics since the last log step.
    last_good_step, saved_step = first_step, first_step
    timer = (first_step, time.perf_counter())
    data_wait_s = 0.0  # Time the loop spent waiting for batches since the last log step.
    step = first_step
    try:
        with _StopRequest() as stop:
            for step in range(first_step + 1, total_steps + 1):
                fetch_start = time.perf_counter()
                batch = parallel.to_global_batch(next(train_iter), mesh)
                data_wait_s += time.perf_counter() - fetch_start
                state, metrics = train_step(state, batch, jax.random.fold_in(loop_rng, step))
                window = metrics if window is None else _accumulate(window, metrics)
                window_steps += 1
                writer.advance()

                is_last = step == total_steps or stop.should_stop(step)
                is_log = step % config.train.log_every_steps == 0 or is_last
                due = [entry for entry in entries if entry.is_due(step, total_steps)]
                row = {}
                # Metrics leave the device only here; nothing is evaluated or saved past a NaN.
                if is_log or due or ckpt.is_due(step) or is_last:
                    means = {k: float(v) / window_steps for k, v in jax.device_get(window).items()}
                    check_finite(means, step, last_good_step, ckpt)
                    last_good_step = step
                if is_log:
                    now = time.perf_counter()
                    row.update(
                        means,
                        steps_per_sec=(step - timer[0]) / (now - timer[1]),
                        # Near 1: the input pipeline, not the device, sets the pace.
                        data_wait_fraction=data_wait_s / (now - timer[1]),
                    )
                    window, window_steps, timer, data_wait_s = None, 0, (step, now), 0.0

                # --- Evaluators ---
                for entry in due:
                    scalars, images = evaluators.run_entry(entry, state, step)
                    evaluators.check_result(best.metric, entry, scalars)
                    row.update(scalars)
                    for image_name, image in images.items():
                        writer.write_image(step, f"{entry.name}/{image_name}", image)
                if row:
                    writer.write_scalars(step, row)

                # --- Checkpoints: also at every step that computes the best metric ---
                has_best = best.metric in row
                if ckpt.is_due(step) or is_last or has_best:
                    ranked = {best.metric: row[best.metric]} if has_best else None
                    ckpt.save(step, state, train_iter, metrics=ranked)
                    saved_step = step
                    writer.write_curves()
                if is_last:
                    break
        if step < total_steps:
            logging.warning(
                "Stopped at step %d of %d; the checkpoint there resumes the run.", step, total_steps
            )
        elif first_step >= total_steps:
            logging.info("The checkpoint is at step %d >= train.total_steps.", first_step)
        else:
            best_step = ckpt.best_step()
            logging.info(
                "Finished at step %d; last checkpoint at step %d%s.",
                step,
                saved_step,
                f", best {best.metric} at step {best_step}" if best_step is not None else "",
            )
        # Also when a run killed before them resumes at its last step.
        if step >= total_steps and on_best and not best_logged(on_best, workdir, step):
            ckpt.wait()
            evaluate_best(on_best, config, built.abstract_state, ckpt.directory, writer, step)
    finally:
        try:
            ckpt.close()  # Waits for the last save: a failed one raises here.
        finally:
            writer.close()
    return state
