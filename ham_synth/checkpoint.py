"""Checkpoints: one orbax CheckpointManager in `workdir/checkpoints` holding the train state and
the data-iterator state together, so a resumed run continues with the same params *and* data.

The latest `keep` checkpoints are kept for resume and, when a best metric is named, the best one
beside them (orbax preservation policies). Which weights a run starts from is decided in
workdir.py.

A restore first checks the saved shapes against the model the config builds, and refuses a
different model naming both shapes. A checkpoint that cannot be read (truncated, files missing)
is skipped for the next newest; a training run moves it to `checkpoints/damaged/`. Orbax
writes each checkpoint into a temporary folder and renames it when complete, so a save cut off
by a kill is never taken for a checkpoint.
"""

import pathlib

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from ham_synth import parallel

MODES = ("min", "max")
DAMAGED_DIR = "damaged"
# What orbax and tensorstore raise for a checkpoint with truncated or missing files.
DAMAGE_ERRORS = (ValueError, KeyError, OSError)


class ModelMismatchError(ValueError):
    """The checkpoint holds a different model (names or shapes) than the config builds."""


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, no permission); the ones before stay."""


class NoReadableCheckpointError(FileNotFoundError):
    """Every checkpoint in the directory is damaged."""


class ProcessCountError(ValueError):
    """The checkpoint was written by another number of processes than this run has."""


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
            options=_options(
                keep,
                best_metric,
                best_mode,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step() if self.best_metric else None

    def is_due(self, step: int) -> bool:
        return step % self.every_steps == 0

    def save(self, step: int, state, data_iterator, metrics: dict | None = None) -> None:
        """Starts an async save of both; the data iterator's position is read now. `metrics`
        (holding the best metric) rank the checkpoint for the best-checkpoint policy. A failed
        earlier save (disk full) raises CheckpointSaveError here or at `wait`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        )
        try:
            self._manager.save(step, args=args, metrics=metrics)
        except OSError as e:
            raise self._save_failed(e) from e

    def restore_or_init(self, abstract_state, data_iterator, init_fn):
        """(state, step): the newest readable checkpoint restored onto `abstract_state`'s
        shardings, with `data_iterator` rewound to match; or `init_fn()` at step 0. Damaged
        checkpoints on the way are moved to `damaged/`."""

        def restore(step):
            return self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=grain.checkpoint.CheckpointRestore(data_iterator),
                ),
            )["state"]

        while (step := self.latest_step()) is not None:
            check_model_matches(self.directory, step, abstract_state)
            check_process_count(self.directory, step)
            try:
                state, error = restore(step), None
            except DAMAGE_ERRORS as e:
                state, error = None, e
            # Every process moves on together: one that could read it would train alone.
            if not parallel.every_process(error is None):
                self._move_aside(step, error or OSError("unreadable on another process"))
                continue
            logging.info("Resuming from the checkpoint at step %d in %s", step, self.directory)
            return state, step
        damaged = self.directory / DAMAGED_DIR
        if damaged.is_dir() and any(damaged.iterdir()):
            raise NoReadableCheckpointError(
                f"No readable checkpoint in {self.directory}: the damaged ones are in {damaged}. "
                f"To start this run from step 0, delete {damaged} (or train in a new --workdir)."
            )
        return init_fn(), 0

    def _move_aside(self, step: int, error: BaseException) -> None:
        """Moves the damaged checkpoint `step` to damaged/ (process 0) and forgets it."""
        target = _free_name(self.directory / DAMAGED_DIR / str(step))
        logging.warning(
            "The checkpoint at step %d in %s is damaged (%s: %s); moving it to %s and trying "
            "the one before.",
            step, self.directory, type(error).__name__, str(error)[:300], target,
        )  # fmt: skip
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until async saves are on disk."""
        try:
            self._manager.wait_until_finished()
        except OSError as e:
            raise self._save_failed(e) from e

    def close(self) -> None:
        """Waits for the last save, then releases the manager."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def _save_failed(self, error: OSError) -> "CheckpointSaveError":
        committed = sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())
        kept = (
            f"The checkpoint at step {committed[-1]} is intact: free disk space (or make the "
            "folder writable) and rerun the same command to resume from it."
            if committed
            else "No checkpoint was written yet: free disk space and rerun to start over."
        )
        return CheckpointSaveError(f"Writing a checkpoint to {self.directory} failed ({error}). "
                                   + kept)  # fmt: skip


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
        if step == "latest":  # The newest readable one.
            candidates = sorted(available, reverse=True)
        else:
            candidates = [_resolve_step(manager, step, available, best_metric)]
        for chosen in candidates:
            check_model_matches(directory, chosen, abstract_state)
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            try:
                return manager.restore(chosen, args=args)["state"], chosen
            except DAMAGE_ERRORS as e:
                if step != "latest":
                    raise NoReadableCheckpointError(
                        f"The checkpoint at step {chosen} in {directory} is damaged "
                        f"({type(e).__name__}: {str(e)[:300]}); choose another of {available}."
                    ) from e
                logging.warning("The checkpoint at step %d in %s is damaged (%s); trying the "
                                "one before.", chosen, directory, type(e).__name__)  # fmt: skip
        raise NoReadableCheckpointError(
            f"Every checkpoint in {directory} ({available}) is damaged; retrain the run."
        )
    finally:
        manager.close()


def _resolve_step(manager, step, available, best_metric: str) -> int:
    """The step that "best" or a number names."""
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


def _leaf_name(path) -> str:
    """A pytree path as `params/Conv_0/kernel`, the same for the train state's dataclass and
    optax tuples as for the dicts orbax saves them as."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return "/".join(names)


def _shapes(tree) -> dict[str, tuple]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {_leaf_name(path): tuple(leaf.shape) for path, leaf in leaves}


def check_process_count(directory: pathlib.Path, step: int) -> None:
    """Raises ProcessCountError when the checkpoint `step` was written by another number of
    processes: grain keeps one data-iterator state per process (process_<i>-of-<n>.json), so
    the data cannot resume (a restore would take it for damage)."""
    files = (directory / str(step) / "data").glob("process_*-of-*.json")
    written = {int(path.stem.rsplit("-of-", 1)[1]) for path in files}
    if written and jax.process_count() not in written:
        raise ProcessCountError(
            f"The checkpoint at step {step} in {directory} was written by {max(written)} "
            f"process(es), each with its own data-iterator state; this run has "
            f"{jax.process_count()}. Resume it with {max(written)} processes, or start a new run "
            f"from its weights: --config.init_from={directory.parent}:{step} with a new --workdir."
        )


def check_model_matches(directory: pathlib.Path, step: int, abstract_state) -> None:
    """Raises ModelMismatchError naming the variables whose names or shapes differ between
    the checkpoint `step` and `abstract_state`. A checkpoint whose metadata cannot be read is
    left to the restore, which reports it damaged."""
    reader = ocp.StandardCheckpointHandler()
    try:
        saved_tree = reader.metadata(directory / str(step) / "state")
    except DAMAGE_ERRORS:
        return
    finally:
        reader.close()
    if saved_tree is None:
        return
    saved = _shapes(saved_tree.tree)
    wanted = _shapes(abstract_state)
    differ = [f"{k} is {saved[k]} there, {wanted[k]} here"
              for k in sorted(set(saved) & set(wanted)) if saved[k] != wanted[k]]  # fmt: skip
    missing, unexpected = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if not (differ or missing or unexpected):
        return
    found = []
    if differ:
        found.append(f"{len(differ)} shapes differ ({'; '.join(differ[:3])})")
    if missing:
        found.append(f"{len(missing)} variables are not in the checkpoint ({missing[:3]})")
    if unexpected:
        found.append(f"{len(unexpected)} are only in the checkpoint ({unexpected[:3]})")
    raise ModelMismatchError(
        f"The checkpoint at step {step} in {directory} holds a different model than this config "
        f"builds: {', '.join(found)}. Use a new --workdir for a new model, or the config the run "
        "was trained with (its config.json)."
    )


def _free_name(path: pathlib.Path) -> pathlib.Path:
    """`path`, or `path.1`, `path.2`, ... whichever does not exist yet."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
