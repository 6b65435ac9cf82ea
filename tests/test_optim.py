"""The learning-rate schedule and clipping, against their closed forms."""

import math

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
