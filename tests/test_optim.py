"""The learning-rate schedule, clipping and per-parameter lr scales, against their closed forms."""

import math

import jax
import numpy as np
import pytest
from conftest import load_config

from ham_synth import optim


def _optim(**overrides):
    return load_config("vae.py:smoke", **{f"optim.{k}": v for k, v in overrides.items()}).optim


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    config = _optim(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    schedule = optim.make_schedule(config, total_steps=110)
    assert float(schedule(0)) == 0.0
    np.testing.assert_allclose(float(schedule(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(10)), 1.0, rtol=1e-6)
    # Halfway through the decay the cosine sits midway between peak and floor.
    np.testing.assert_allclose(float(schedule(60)), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    np.testing.assert_allclose(float(schedule(110)), 0.1, rtol=1e-6)


def test_schedule_steps_overrides_the_run_length():
    schedule = optim.make_schedule(_optim(warmup_steps=0, schedule_steps=200), total_steps=100)
    assert float(schedule(100)) == pytest.approx(0.5 * float(schedule(0)), rel=1e-5)


def test_warmup_longer_than_the_schedule_is_refused():
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        optim.make_schedule(_optim(warmup_steps=50), total_steps=20)


def test_a_network_updated_twice_a_step_follows_the_schedule_by_train_step():
    # A GAN's discriminator (n_disc 2): its 20 updates over 10 steps read schedule(update // 2),
    # so its warmup and cosine span the run, not its first half.
    config = _optim(lr=1.0, warmup_steps=2, min_lr_ratio=0.0, weight_decay=0.0, grad_clip=0.0)
    twice = optim.make_optimizer(config, 10, updates_per_step=2)
    params, grads = {"w": np.zeros(())}, {"w": np.ones(())}
    state, applied = twice.tx.init(params), []
    for _ in range(20):
        updates, state = twice.tx.update(grads, state, params)
        applied.append(-float(updates["w"]))  # Adam on a constant gradient: the lr itself.
    expected = [float(twice.schedule(update // 2)) for update in range(20)]
    np.testing.assert_allclose(applied, expected, rtol=1e-5, atol=1e-7)
    assert expected[4] == pytest.approx(1.0) and expected[-1] < 0.05  # Peak at step 2, then down.


def _one_update(tx, params, grads):
    updates, state = tx.update(grads, tx.init(params), params)
    return updates, state


def test_lr_scale_multiplies_the_adamw_update_and_zero_freezes():
    config = _optim(lr=0.1, warmup_steps=0, weight_decay=0.01, grad_clip=0.0)
    rng = np.random.default_rng(0)
    params = {name: {"kernel": rng.normal(size=(3, 2)).astype(np.float32)} for name in "abc"}
    grads = {name: {"kernel": rng.normal(size=(3, 2)).astype(np.float32)} for name in "abc"}
    scales = {"a/kernel": 0.0, "b/kernel": 0.25, "c/kernel": 1.0}
    scaled = optim.make_optimizer(config, 10, lr_scale=scales.__getitem__).tx
    plain = optim.make_optimizer(config, 10).tx

    updates, state = _one_update(scaled, params, grads)
    reference, _ = _one_update(plain, params, grads)
    np.testing.assert_array_equal(updates["a"]["kernel"], 0.0)
    np.testing.assert_allclose(updates["b"]["kernel"], 0.25 * reference["b"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["c"]["kernel"], reference["c"]["kernel"], rtol=1e-6)
    # The frozen parameter has no Adam moments: only b's and c's are in the state.
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (3, 2)]
    assert len(moments) == 4  # mu and nu of b and c


def test_frozen_gradients_are_left_out_of_the_clipping_norm():
    config = _optim(lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=1.0, b1=0.0, b2=0.0)
    params = {"frozen": np.zeros(1, np.float32), "trained": np.zeros(1, np.float32)}
    grads = {"frozen": np.full(1, 1e6, np.float32), "trained": np.full(1, 0.5, np.float32)}
    lr_scale = {"frozen": 0.0, "trained": 1.0}.__getitem__
    tx = optim.make_optimizer(config, 10, lr_scale=lr_scale).tx
    _, state = _one_update(tx, params, grads)
    # b2 = 0: nu holds the squared clipped gradient, which the frozen 1e6 did not shrink.
    nus = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (1,)]
    np.testing.assert_allclose(nus[-1], 0.25, rtol=1e-6)


@pytest.mark.parametrize("decay, bias_decays", [("all", True), ("kernels", False)])
def test_decay_kernels_leaves_biases_and_norms_undecayed(decay, bias_decays):
    config = _optim(lr=0.1, warmup_steps=0, weight_decay=0.5, grad_clip=0.0, decay=decay)
    params = {
        "Dense_0": {"kernel": np.ones((2, 2), np.float32), "bias": np.ones(2, np.float32)},
        "LayerNorm_0": {"scale": np.ones(2, np.float32)},
    }
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = _one_update(optim.make_optimizer(config, 10).tx, params, zero_grads)
    # With a zero gradient AdamW's update is the decoupled decay alone: -lr * wd * param.
    np.testing.assert_allclose(updates["Dense_0"]["kernel"], -0.05, rtol=1e-6)
    for update in (updates["Dense_0"]["bias"], updates["LayerNorm_0"]["scale"]):
        np.testing.assert_allclose(update, -0.05 if bias_decays else 0.0, rtol=1e-6)


def test_unknown_decay_is_refused():
    with pytest.raises(ValueError, match="optim.decay='kernel'"):
        optim.make_optimizer(_optim(decay="kernel"), 10)
