"""Checkpoints: one orbax CheckpointManager in `workdir/checkpoints` holding the train state and
the data-iterator state together, so a resumed run continues with the same params *and* data.

Resume order: a checkpoint in the workdir > a fresh state.
"""

import pathlib

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Saves {state, data} asynchronously when the trainer asks; keeps the last `keep`."""

    def __init__(self, directory: pathlib.Path, *, every_steps: int, keep: int):
        self.directory = pathlib.Path(directory).absolute()
        self.every_steps = every_steps
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def is_due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state, data_iterator) -> None:
        """Starts an async save of both; the data iterator's position is read now."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
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


def restore_latest_state(directory: pathlib.Path, abstract_state):
    """(state, step) from the newest checkpoint in `directory`, without the data iterator."""
    manager = ocp.CheckpointManager(
        pathlib.Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
    )
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(
                f"No checkpoint in {directory}; train one first with `ham-synth train`."
            )
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )
    finally:
        manager.close()
    return restored["state"], step


def abstract_with_sharding(abstract_tree, sharding):
    """ShapeDtypeStructs (from jax.eval_shape) that carry `sharding`, as orbax restore needs."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree
    )
