"""The EMA's warmup against its closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ham_synth import state as state_lib


def _weight_on_init(decay: float, updates: int) -> float:
    """What is left of an init of 1 after `updates` EMA updates towards params that stay at 0."""
    ema = jnp.ones(())
    update = jax.jit(state_lib.ema_update)
    for t in range(1, updates + 1):
        ema = update(ema, jnp.zeros(()), decay, jnp.int32(t))
    return float(ema)


@pytest.mark.parametrize("updates", [1, 5, 100])
def test_warmup_leaves_the_closed_form_weight_on_the_init(updates):
    # prod_{t=1..T} (1 + t) / (10 + t) = 10! (T + 1)! / (T + 10)! while below the decay.
    expected = math.factorial(10) * math.factorial(updates + 1) / math.factorial(updates + 10)
    left = _weight_on_init(0.999, updates)
    np.testing.assert_allclose(left, expected, rtol=1e-4)
    if updates >= 100:
        assert left <= 1e-3


def test_decay_caps_the_warmup_and_zero_means_the_params():
    # (1 + t) / (10 + t) passes 0.9 at t = 81: from there the configured decay applies.
    np.testing.assert_allclose(state_lib.ema_decay_at(0.9, 1000), 0.9, rtol=1e-7)
    np.testing.assert_allclose(state_lib.ema_decay_at(0.9, 5), 6 / 15, rtol=1e-6)
    ema = state_lib.ema_update(jnp.full(3, 7.0), jnp.arange(3.0), 0.0, jnp.int32(10_000))
    np.testing.assert_array_equal(ema, jnp.arange(3.0))
