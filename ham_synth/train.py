"""The one train loop every model family uses: mesh, state, jitted step, logging, checkpoints
and sample grids. A family only supplies a Task (tasks/base.py)."""

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

from ham_synth import checkpoint, optim, parallel, tasks
from ham_synth import metric_writer as metric_writer_lib
from ham_synth.data import pipeline
from ham_synth.evaluators import samples
from ham_synth.tasks import base


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step range and the last checkpoint."""


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
    """Records SIGTERM (preemption, `kill`) so the loop can checkpoint and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        logging.warning("Received signal %d: checkpointing and stopping.", signum)
        self.requested = True

    def should_stop(self, step: int) -> bool:
        # With several hosts, all must stop at the same step; JAX's preemption service agrees on it.
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _non_finite_error(value, step, last_good_step, ckpt) -> NonFiniteLossError:
    last_ckpt = ckpt.latest_step()
    where = (
        f"the last checkpoint is step {last_ckpt} in {ckpt.directory}; rerunning resumes from it"
        if last_ckpt is not None
        else "no checkpoint was saved"
    )
    return NonFiniteLossError(
        f"train/loss is {value} at step {step}: it became non-finite after step {last_good_step} "
        f"(steps {last_good_step + 1}..{step}). Training stopped; {where}. Try a lower optim.lr "
        f"or optim.grad_clip."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
    """Trains `config.task` to `config.train.total_steps`, resuming from `workdir` if it holds a
    checkpoint. Returns the final TrainState."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    total_steps = config.train.total_steps

    # --- Setup ---
    mesh = parallel.make_mesh(config.train.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    logging.info(
        "Mesh %s over %d devices (%d processes).", dict(mesh.shape), mesh.size, jax.process_count()
    )
    # One root rng; fold_in(step) below makes a resumed run draw the same noise.
    init_rng, sample_rng, loop_rng = jax.random.split(jax.random.key(config.seed), 3)

    # --- Data ---
    # The data fills in data.num_classes and class_names; config.json records them, so `sample`
    # rebuilds this task.
    dataset, config = pipeline.make_train_dataset(config)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    train_iter = iter(dataset)
    example_batch = jax.tree.map(lambda x: x[:1], next(iter(dataset)))

    # --- Task and state ---
    task = tasks.get_task(config.task)(config)
    replicated = parallel.replicated(mesh)
    abstract_state = checkpoint.abstract_with_sharding(
        jax.eval_shape(task.init, init_rng, example_batch), replicated
    )
    train_step = make_train_step(task, mesh)
    schedule = optim.make_schedule(config.optim, total_steps)

    # --- Checkpointing ---
    ckpt = checkpoint.Checkpointer(
        workdir / "checkpoints",
        every_steps=config.train.ckpt_every_steps,
        keep=config.train.keep_checkpoints,
    )
    init_fn = jax.jit(task.init, out_shardings=replicated)
    state, first_step = ckpt.restore_or_init(
        abstract_state, train_iter, lambda: init_fn(init_rng, example_batch)
    )
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        "Task %r with %s parameters; steps %d..%d.",
        config.task,
        f"{num_params:,}",
        first_step + 1,
        total_steps,
    )

    # --- Samples ---
    class_names = config.data.class_names.split(",")
    num_classes = len(class_names)
    sample_labels = samples.class_grid_labels(num_classes, config.train.samples_per_class)
    sample_fn = jax.jit(task.sample, out_shardings=replicated) if task.sample else None

    def write_samples(params, step):
        """A grid from fixed noise, so grids from different steps compare directly."""
        images = np.asarray(jax.device_get(sample_fn(params, sample_labels, sample_rng)))
        grid = samples.make_grid(images, rows=num_classes)
        if jax.process_index() == 0:
            path = workdir / "samples" / f"step_{step:07d}.png"
            scale = samples.display_scale(images.shape[1])
            samples.write_png(path, grid, scale=scale, row_labels=class_names)
        writer.write_image(step, "samples", grid)

    # --- Loop ---
    writer = metric_writer_lib.MetricWriter(workdir, first_step=first_step, total_steps=total_steps)
    window, window_steps = None, 0  # On-device sum of metrics since the last log step.
    last_good_step, saved_step = first_step, first_step
    timer = (first_step, time.perf_counter())
    step = first_step
    try:
        with _StopRequest() as stop:
            for step in range(first_step + 1, total_steps + 1):
                batch = parallel.to_global_batch(next(train_iter), mesh)
                state, metrics = train_step(state, batch, jax.random.fold_in(loop_rng, step))
                window = metrics if window is None else _accumulate(window, metrics)
                window_steps += 1
                writer.advance()

                is_last = step == total_steps or stop.should_stop(step)
                is_log = step % config.train.log_every_steps == 0 or is_last
                is_ckpt = ckpt.is_due(step) or is_last
                # Metrics leave the device only here; a checkpoint is never written past a NaN.
                if is_log or is_ckpt:
                    means = {k: float(v) / window_steps for k, v in jax.device_get(window).items()}
                    if not np.isfinite(means["train/loss"]):
                        raise _non_finite_error(means["train/loss"], step, last_good_step, ckpt)
                    last_good_step = step
                if is_log:
                    now = time.perf_counter()
                    means["train/lr"] = float(schedule(step - 1))
                    means["steps_per_sec"] = (step - timer[0]) / (now - timer[1])
                    writer.write_scalars(step, means)
                    window, window_steps, timer = None, 0, (step, now)
                if is_ckpt:
                    ckpt.save(step, state, train_iter)
                    saved_step = step
                if sample_fn and (step % config.train.sample_every_steps == 0 or is_last):
                    write_samples(state.ema_params, step)
                    writer.write_curves()
                if is_last:
                    break
        if step < total_steps:
            logging.warning(
                "Stopped at step %d of %d; the checkpoint there resumes the run.", step, total_steps
            )
        elif first_step >= total_steps:
            logging.info(
                "Nothing to do: the checkpoint is at step %d >= train.total_steps.", first_step
            )
        else:
            logging.info("Finished at step %d; last checkpoint at step %d.", step, saved_step)
    finally:
        ckpt.wait()
        ckpt.close()
        writer.close()
    return state
