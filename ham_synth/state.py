"""The train state every family shares: a plain pytree of arrays, so orbax and shardings see
all of it."""

from typing import Any

import flax
import jax
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


def ema_update(ema_params, params, decay: float):
    """ema <- decay * ema + (1 - decay) * params."""
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)


def eval_variables(state: TrainState) -> dict:
    """The flax variables that sampling and evaluation apply: the EMA params and the model state."""
    return {"params": state.ema_params, **state.model_state}
