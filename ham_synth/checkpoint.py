"""Checkpoints: one orbax CheckpointManager in `workdir/checkpoints` holding the train state and
the data-iterator state together, so a resumed run continues with the same params *and* data.

The latest `keep` checkpoints are kept for resume and, when a best metric is named, the best one
beside them (orbax preservation policies). Which weights a run starts from is decided in
workdir.py.
"""

import pathlib

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

MODES = ("min", "max")


def _options(keep: int | None, best_metric: str, best_mode: str, **kwargs):
    """Manager options that keep the latest `keep` checkpoints (None: all) and the best one by
    `best_metric` when it is named."""
    if not best_metric:
        return ocp.CheckpointManagerOptions(max_to_keep=keep, **kwargs)
    if best_mode not in MODES:
        raise ValueError(f"train.best.mode={best_mode!r}; choose one of {MODES}.")
    policies = ocp.checkpoint_managers
    preservation = policies.AnyPreservationPolicy(
        [
            policies.LatestN(n=keep),
            policies.BestN(
                get_metric_fn=lambda metrics: metrics[best_metric],
                reverse=best_mode == "min",  # Sorted so that the best comes last.
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    return ocp.CheckpointManagerOptions(
        best_fn=lambda metrics: metrics[best_metric],
        best_mode=best_mode,
        preservation_policy=preservation,
        **kwargs,
    )


class Checkpointer:
    """Saves {state, data} asynchronously when the trainer asks; keeps the last `keep` and, with
    `best_metric`, the checkpoint where that metric was best."""

    def __init__(
        self,
        directory: pathlib.Path,
        *,
        every_steps: int,
        keep: int,
        best_metric: str = "",
        best_mode: str = "max",
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.every_steps = every_steps
        self.best_metric = best_metric
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=_options(keep, best_metric, best_mode, enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step() if self.best_metric else None

    def is_due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state, data_iterator, metrics: dict | None = None) -> None:
        """Starts an async save of both; the data iterator's position is read now. `metrics`
        (holding the best metric) rank the checkpoint for the best-checkpoint policy."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
            metrics=metrics,
        )

    def restore_or_init(self, abstract_state, data_iterator, init_fn):
        """(state, step): the latest checkpoint restored onto `abstract_state`'s shardings,
        with `data_iterator` rewound to match; or `init_fn()` at step 0."""
        step = self.latest_step()
        if step is None:
            return init_fn(), 0
        logging.info("Resuming from the checkpoint at step %d in %s", step, self.directory)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"], step

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def restore_state(
    directory: pathlib.Path,
    abstract_state,
    step: str | int = "latest",
    *,
    best_metric: str = "",
    best_mode: str = "max",
):
    """(state, step) from the checkpoint `step` ("latest", "best" or a number) in `directory`,
    without the data iterator."""
    directory = pathlib.Path(directory).absolute()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"No checkpoints in {directory.parent}; train one first with `ham-synth train`."
        )
    options = _options(None, best_metric, best_mode, read_only=True)
    manager = ocp.CheckpointManager(directory, options=options)
    try:
        available = manager.all_steps()
        if not available:
            raise FileNotFoundError(
                f"No checkpoint in {directory}; train one first with `ham-synth train`."
            )
        chosen = _resolve_step(manager, step, available, best_metric)
        restored = manager.restore(
            chosen, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
    finally:
        manager.close()
    return restored["state"], chosen


def _resolve_step(manager, step, available, best_metric: str) -> int:
    if step == "latest":
        return manager.latest_step()
    if step == "best":
        if not best_metric:
            raise ValueError(
                f"{manager.directory.parent} keeps no best checkpoint (its train.best.metric is "
                "empty); use step latest or one of " + ", ".join(map(str, available)) + "."
            )
        best = manager.best_step()
        if best is None or best not in available:
            raise FileNotFoundError(
                f"No checkpoint in {manager.directory} has {best_metric!r} yet; use latest."
            )
        return best
    if int(step) not in available:
        raise FileNotFoundError(
            f"No checkpoint at step {step} in {manager.directory}; it has steps {available}."
        )
    return int(step)


def abstract_with_sharding(abstract_tree, sharding):
    """ShapeDtypeStructs (from jax.eval_shape) that carry `sharding`, as orbax restore needs."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree
    )
