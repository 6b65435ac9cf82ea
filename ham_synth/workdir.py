"""One way to build a run from its config, and one way to restore it from its workdir alone.

`build(config)` is what training starts from: data -> config with class names -> task -> the
state's shapes. `load(workdir)` needs only `config.json` and a checkpoint, never the dataset, so
`sample`, `evaluate` and the study restore runs whose data is elsewhere.

Where a run's weights come from, first match wins:
  1. the newest checkpoint in its own workdir (resume; 2 and 3 are never re-applied);
  2. `config.init_from="WORKDIR[:STEP]"`: params, EMA params and model state of another run;
  3. external weights named by a model field (e.g. the ViT's `model.init_from_npz`);
  4. random init.
Setting both 2 and 3 is an error.
"""

import dataclasses
import pathlib

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from ham_synth import checkpoint, config_lib, parallel, tasks
from ham_synth import state as state_lib
from ham_synth import variables as variables_lib
from ham_synth.data import pipeline
from ham_synth.tasks import base

STEP_CHOICES = ("latest", "best")


@dataclasses.dataclass(frozen=True)
class Built:
    """A run ready to train: its config (class names filled in), data, task and state shapes."""

    config: ml_collections.ConfigDict
    dataset: grain.IterDataset
    task: base.Task
    abstract_state: state_lib.TrainState  # ShapeDtypeStructs, replicated on the mesh.


@dataclasses.dataclass(frozen=True)
class Run:
    """A restored run: what `load` returns."""

    workdir: pathlib.Path
    config: ml_collections.ConfigDict
    task: base.Task
    state: state_lib.TrainState
    step: int


def example_batch(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """A one-record batch of zeros with the shapes the task is initialized from; it depends on the
    config only, so training and restoring build the same state."""
    size = pipeline.model_input_size(config.data)
    return {
        "image": np.zeros((1, size, size, 3), np.float32),
        "label": np.zeros((1,), np.int32),
        "index": np.zeros((1,), np.int32),
        "synthetic": np.zeros((1,), np.bool_),
    }


def abstract_state(task: base.Task, config, mesh) -> state_lib.TrainState:
    """The task's state as sharded shapes (nothing allocated), as orbax restore needs."""
    shapes = jax.eval_shape(task.init, jax.random.key(0), example_batch(config))
    return checkpoint.abstract_with_sharding(shapes, parallel.replicated(mesh))


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Built:
    """The training data, then the task sized from it."""
    dataset, config = pipeline.make_train_dataset(config)
    task = tasks.get_task(config.task)(config)
    return Built(config, dataset, task, abstract_state(task, config, mesh))


def initial_state(built: Built, rng: jax.Array, mesh) -> state_lib.TrainState:
    """Step 0: random init, then `config.init_from` (precedence 2) or external weights
    (precedence 3) when set."""
    config = built.config
    if config.init_from and built.task.load_external is not None:
        raise ValueError(
            f"init_from={config.init_from!r} and the external weights the {config.task!r} "
            f"family reads ({', '.join(built.task.init_fields)}) both name initial weights; "
            "keep one."
        )
    init = jax.jit(built.task.init, out_shardings=parallel.replicated(mesh))
    state = init(rng, example_batch(config))
    if config.init_from:
        state = warm_start(state, config.init_from, mesh)
    elif built.task.load_external is not None:
        state = jax.device_put(built.task.load_external(state), parallel.replicated(mesh))
    return state


def default_step(config: ml_collections.ConfigDict) -> str:
    """The checkpoint a finished run is used from: best when it keeps one, else latest."""
    return "best" if config.train.best.metric else "latest"


def parse_step(step: str | int) -> str | int:
    """ "latest", "best" or a step number, from a flag or an `init_from` suffix."""
    if isinstance(step, int) or step in STEP_CHOICES:
        return step
    try:
        return int(step)
    except ValueError:
        raise ValueError(
            f"Checkpoint step {step!r}; use {' or '.join(STEP_CHOICES)} or a step number."
        ) from None


def load(
    workdir: str | pathlib.Path, step: str | int = "latest", mesh: jax.sharding.Mesh | None = None
) -> Run:
    """A run restored from `workdir/config.json` and its checkpoint `step` (latest, best or N)."""
    workdir = pathlib.Path(workdir)
    mesh = mesh or parallel.make_mesh()
    config = config_lib.load_workdir_config(workdir)
    task = tasks.get_task(config.task)(config)
    state, restored_step = checkpoint.restore_state(
        workdir / "checkpoints",
        abstract_state(task, config, mesh),
        parse_step(step),
        best_metric=config.train.best.metric,
        best_mode=config.train.best.mode,
    )
    return Run(workdir, config, task, state, restored_step)


def warm_start(state: state_lib.TrainState, init_from: str, mesh) -> state_lib.TrainState:
    """`state` with params, EMA params and model state copied from the run `init_from` names
    ("WORKDIR[:STEP]"); every name and shape must match."""
    source_dir, _, step = init_from.partition(":")
    source = load(source_dir, step or "latest", mesh)
    for field in ("params", "ema_params", "model_state"):
        variables_lib.check_same(
            getattr(state, field),
            getattr(source.state, field),
            f"init_from={init_from!r}: {field} there vs here",
            hint="init_from needs the same architecture and sizes.",
        )
    logging.info(
        "Initialized params, EMA params and model state from %s at step %d (config.init_from).",
        source_dir,
        source.step,
    )
    return state.replace(
        params=source.state.params,
        ema_params=source.state.ema_params,
        model_state=source.state.model_state,
    )
