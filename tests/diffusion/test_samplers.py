"""Samplers on an exact denoiser: Gaussian data, whose posterior mean E[x_0 | x_t] is known."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ham_synth.diffusion import samplers, schedule

T = 1000
DATA_STD = 0.5
ALPHAS_CUMPROD = schedule.alphas_cumprod(schedule.make_betas("linear", T, 1e-4, 0.02))


def _exact_eps(x, t, labels):
    """Optimal ε-prediction when x_0 ~ N(label / 10, DATA_STD²) per pixel."""
    a = jnp.asarray(ALPHAS_CUMPROD, jnp.float32)[t].reshape(-1, 1, 1, 1)
    mean = (labels / 10.0).reshape(-1, 1, 1, 1)
    var = DATA_STD**2
    x0 = mean + jnp.sqrt(a) * var / (a * var + 1 - a) * (x - jnp.sqrt(a) * mean)
    return (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)


@functools.cache
def _sampler(sampler, steps, eta=0.0):
    """Jitted once per setting: compiling dominates these tests' time."""
    return jax.jit(
        functools.partial(
            samplers.sample,
            _exact_eps,
            shape=(4, 4, 1),
            alphas_cumprod=ALPHAS_CUMPROD,
            prediction="eps",
            sampler=sampler,
            num_steps=steps,
            eta=eta,
            clip_denoised=False,
        )
    )


def _sample(sampler, steps, rng=0, labels=None, eta=0.0):
    labels = jnp.arange(4, dtype=jnp.int32) if labels is None else labels
    return np.asarray(_sampler(sampler, steps, eta)(labels, jax.random.key(rng)))


def test_timesteps_descend_evenly_from_the_last_one():
    np.testing.assert_array_equal(samplers.timesteps(1000, 4), [999, 749, 499, 249])
    assert len(samplers.timesteps(1000, 1000)) == 1000
    for train_steps in (50, 1000):  # Every count: S steps from T-1, strictly down, none below 0.
        for steps in range(1, train_steps + 1):
            ts = samplers.timesteps(train_steps, steps)
            assert len(ts) == steps and ts[0] == train_steps - 1 and ts[-1] >= 0, steps
            assert (np.diff(ts) < 0).all(), steps
    with pytest.raises(ValueError, match="steps"):
        samplers.timesteps(10, 11)


@pytest.mark.parametrize("sampler", sorted(samplers.SAMPLERS))
def test_samplers_are_deterministic_given_the_rng(sampler):
    first = _sample(sampler, 10, rng=0, eta=1.0)
    np.testing.assert_array_equal(_sample(sampler, 10, rng=0, eta=1.0), first)
    assert not np.allclose(_sample(sampler, 10, rng=1, eta=1.0), first)


def _exact_ode_solution(rng=0):
    """For Gaussian data the probability-flow ODE keeps (x_t - sqrt(ᾱ) m) / sqrt(ᾱ s² + 1 - ᾱ)
    fixed, so it maps the sampler's x_T to x_0 in closed form."""
    init_rng, _ = jax.random.split(jax.random.key(rng))  # As samplers.sample draws x_T.
    x_T = np.asarray(jax.random.normal(init_rng, (4, 4, 4, 1)))
    mean, a = (np.arange(4) / 10.0).reshape(-1, 1, 1, 1), ALPHAS_CUMPROD[-1]
    return mean + DATA_STD * (x_T - np.sqrt(a) * mean) / np.sqrt(a * DATA_STD**2 + 1 - a)


@pytest.mark.slow
def test_dpm_solver_and_ddim_converge_to_the_ode_solution():
    exact = _exact_ode_solution()
    ddim = {n: np.abs(_sample("ddim", n) - exact).max() for n in (100, 1000)}
    dpm = {n: np.abs(_sample("dpmpp_2m", n) - exact).max() for n in (10, 100, 1000)}
    assert ddim[1000] < 5e-3 and ddim[1000] < ddim[100]
    assert dpm[1000] < 2e-4 and dpm[1000] < dpm[100] < dpm[10]
    assert dpm[100] < ddim[100] / 10  # Second order: far closer at equal steps.


def test_samples_have_the_data_distribution():
    labels = jnp.full((256,), 5, jnp.int32)
    # Ancestral sampling is exact only in the many-step limit; the ODE already at 100 steps.
    for sampler, steps in (("ddpm", 1000), ("ddim", 100)):
        x = _sample(sampler, steps, labels=labels)
        np.testing.assert_allclose(x.mean(), 0.5, atol=0.03)
        np.testing.assert_allclose(x.std(), DATA_STD, rtol=0.05)


def test_guidance_zero_is_the_conditional_model_and_w_extrapolates():
    x = jnp.ones((2, 4, 4, 1))
    t = jnp.array([10, 500])
    labels = jnp.array([3, 7])
    np.testing.assert_array_equal(
        samplers.guided(_exact_eps, 0.0, null_label=0)(x, t, labels), _exact_eps(x, t, labels)
    )
    cond, uncond = _exact_eps(x, t, labels), _exact_eps(x, t, jnp.zeros_like(labels))
    np.testing.assert_allclose(
        samplers.guided(_exact_eps, 2.0, null_label=0)(x, t, labels),
        cond + 2.0 * (cond - uncond),
        atol=1e-6,
    )
