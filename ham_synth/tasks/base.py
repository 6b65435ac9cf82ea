"""The Task contract: the pure functions a model family gives the one trainer.

The trainer owns the mesh, jit, logging, checkpoints and sampling; a family owns its losses.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax

from ham_synth import state as state_lib

# {"image": float32[B, H, W, C] in [-1, 1], "label": int32[B], "index": int32[B] record ids}
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]  # Scalars, keyed `train/<name>`.
# (params, batch, rng, step) -> (scalar loss, {name: scalar}).
LossFn = Callable[[Any, Batch, jax.Array, jax.Array], tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a model family supplies; every field is a pure, jittable function."""

    init: Callable[[jax.Array, Batch], state_lib.TrainState]  # (rng, example batch) -> state
    train_step: Callable[[state_lib.TrainState, Batch, jax.Array], tuple[Any, Metrics]]
    # (params, labels int32[N], rng) -> images float32[N, H, W, C] in [-1, 1]; None if the
    # family does not generate.
    sample: Callable[[Any, jax.Array, jax.Array], jax.Array] | None = None
    predict_fns: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)


def num_classes(config) -> int:
    """config.data.num_classes, which sizes the class embeddings; 0 means the data has not been
    read yet (`pipeline.make_train_dataset` fills it in)."""
    if config.data.num_classes < 1:
        raise ValueError(
            f"data.num_classes={config.data.num_classes}: build the task from the config that "
            "pipeline.make_train_dataset returns, or set --config.data.num_classes."
        )
    return config.data.num_classes


def make_init(
    init_params: Callable[[jax.Array, Batch], Any], tx: optax.GradientTransformation
) -> Callable[[jax.Array, Batch], state_lib.TrainState]:
    """State at step 0 from a params initializer; the EMA starts at the params."""

    def init(rng, batch):
        params = init_params(rng, batch)
        return state_lib.TrainState(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=params,
            opt_state=tx.init(params),
            ema_params=params,
        )

    return init


def apply_update(params, opt_state, grads, tx: optax.GradientTransformation):
    """One optimizer update; the GAN calls it once per network."""
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def make_simple_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, ema_decay: float):
    """train_step for families with one loss over one params tree (VAE, DDPM, classifier)."""

    def train_step(state, batch, rng):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(state.params, batch, rng, state.step)
        params, opt_state = apply_update(state.params, state.opt_state, grads, tx)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=state_lib.ema_update(state.ema_params, params, ema_decay),
        )
        metrics = {"train/loss": loss, "train/grad_norm": optax.tree.norm(grads)}
        metrics.update({f"train/{name}": value for name, value in aux.items()})
        return new_state, metrics

    return train_step
