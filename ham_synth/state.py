"""The train state every family shares: a plain pytree of arrays, so orbax and shardings see
all of it."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates applied so far.
    params: Any
    opt_state: optax.OptState
    ema_params: Any  # Exponential moving average of params; samples and evals use it.
    # Mutable flax collections besides params ({"batch_stats": ..., "spectral": ...}); {} for
    # families without any. Saved, restored and sharded like the rest.
    model_state: Any


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The EMA's decay at optimizer step `step` (updates applied, this one included): min(decay,
    (1 + step) / (10 + step)), TensorFlow's ExponentialMovingAverage(num_updates=step). Without
    the warmup a 0.999 EMA still holds 0.999**600 = 55% of the random init after 600 steps; with
    it, under 1e-3 after 100. A function of the step alone, so a resumed run continues it."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_params, params, decay: float, step: jax.Array):
    """ema <- d * ema + (1 - d) * params, d = ema_decay_at(decay, step); decay 0: ema = params."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - ema_decay_at(decay, step))


def eval_variables(state: TrainState) -> dict:
    """The flax variables that sampling and evaluation apply: the EMA params and the model state."""
    return {"params": state.ema_params, **state.model_state}
