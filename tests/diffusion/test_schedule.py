"""Schedules and the forward process, against closed forms and diffusers' schedulers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ham_synth.diffusion import samplers, schedule

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

T = 1000


def _linear():
    return schedule.alphas_cumprod(schedule.make_betas("linear", T, 1e-4, 0.02))


def test_linear_alphas_cumprod_match_diffusers():
    reference = diffusers.DDPMScheduler(T, 1e-4, 0.02, "linear").alphas_cumprod.numpy()
    np.testing.assert_allclose(_linear(), reference, atol=1e-6)


def test_cosine_alphas_cumprod_follow_the_closed_form():
    alpha_bar = schedule.alphas_cumprod(schedule.make_betas("cosine", T, 0, 0))
    f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
    # Exact wherever the β clip at 0.999 has not engaged (all but the last few steps).
    np.testing.assert_allclose(alpha_bar[:990], (f[1:] / f[0])[:990], rtol=1e-10)
    assert np.all(np.diff(alpha_bar) < 0) and alpha_bar[-1] < 1e-4


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="diffusion.schedule"):
        schedule.make_betas("quadratic", T, 1e-4, 0.02)


def test_posterior_variance_matches_diffusers_ddpm():
    reference = diffusers.DDPMScheduler(T, 1e-4, 0.02, "linear")
    a = _linear()
    ours = schedule.posterior_variance(a[1:], a[:-1])
    theirs = np.array([float(reference._get_variance(t)) for t in range(1, T)])
    # diffusers works in float32, where 1 - ᾱ_t/ᾱ_prev cancels; we keep float64.
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    eps = rng.normal(size=x.shape).astype(np.float32) * 0.5
    noise = rng.normal(size=x.shape).astype(np.float32)
    return x, eps, noise


def _eps_and_x0(x, eps, a):
    return schedule.to_eps_and_x0(jnp.asarray(eps), jnp.asarray(x), jnp.full((2,), a), "eps")


@pytest.mark.parametrize("t", [999, 500, 1])
def test_one_ddpm_step_matches_diffusers(t):
    scheduler = diffusers.DDPMScheduler(T, 1e-4, 0.02, "linear", clip_sample=False)
    x, eps, _ = _inputs()
    generator = torch.Generator().manual_seed(0)
    theirs = scheduler.step(torch.from_numpy(eps), t, torch.from_numpy(x), generator=generator)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).numpy()
    a = _linear().astype(np.float32)
    eps_hat, x0 = _eps_and_x0(x, eps, a[t])
    ours = samplers.ddpm_step(jnp.asarray(x), eps_hat, x0, a[t], a[t - 1], jnp.asarray(noise))
    np.testing.assert_allclose(ours, theirs.prev_sample.numpy(), atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_ddim_step_matches_diffusers(eta):
    scheduler = diffusers.DDIMScheduler(T, 1e-4, 0.02, "linear", clip_sample=False)
    scheduler.set_timesteps(50)
    t, t_prev = 500, 500 - T // 50
    x, eps, noise = _inputs(1)
    theirs = scheduler.step(
        torch.from_numpy(eps),
        t,
        torch.from_numpy(x),
        eta=eta,
        variance_noise=torch.from_numpy(noise),
    ).prev_sample.numpy()
    a = _linear().astype(np.float32)
    eps_hat, x0 = _eps_and_x0(x, eps, a[t])
    ours = samplers.ddim_step(
        jnp.asarray(x), eps_hat, x0, a[t], a[t_prev], jnp.asarray(noise), eta=eta
    )
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_clipped_ddim_sampling_matches_diffusers_clip_sample():
    """clip_denoised: a whole DDIM-10 run of a model whose x̂_0 leaves [-1, 1] equals diffusers'
    DDIMScheduler(clip_sample=True, trailing steps) with ε re-derived from the clipped x̂_0
    (use_clipped_model_output), from the same x_T."""

    def eps_model(x, t):
        return 0.5 * x + 0.1 * jnp.sin(t / 100.0)  # x̂_0 far outside [-1, 1] at large t.

    labels, rng = jnp.zeros(2, jnp.int32), jax.random.key(3)
    ours = samplers.sample(lambda x, t, y: eps_model(x, t.reshape(-1, 1, 1, 1)), labels, rng,
                           shape=(4, 4, 3), alphas_cumprod=_linear(), prediction="eps",
                           sampler="ddim", num_steps=10, clip_denoised=True)  # fmt: skip
    scheduler = diffusers.DDIMScheduler(T, 1e-4, 0.02, "linear", clip_sample=True,
                                        timestep_spacing="trailing")  # fmt: skip
    scheduler.set_timesteps(10)
    np.testing.assert_array_equal(scheduler.timesteps.numpy(), samplers.timesteps(T, 10))
    x = torch.from_numpy(np.asarray(jax.random.normal(jax.random.split(rng)[0], (2, 4, 4, 3))))
    clipped = False
    for t in scheduler.timesteps:
        eps = torch.from_numpy(np.asarray(eps_model(jnp.asarray(x.numpy()), float(t))))
        step = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True)
        clipped |= bool(step.pred_original_sample.abs().max() == 1.0)
        x = step.prev_sample
    assert clipped
    np.testing.assert_allclose(ours, x.numpy(), atol=1e-4)


def test_q_sample_has_the_right_mean_and_variance():
    x0 = jnp.full((20_000, 1, 1, 1), 0.7)
    a = 0.3
    noise = jax.random.normal(jax.random.key(0), x0.shape)
    x_t = np.asarray(schedule.q_sample(x0, jnp.full((20_000,), a), noise))
    np.testing.assert_allclose(x_t.mean(), np.sqrt(a) * 0.7, atol=0.02)
    np.testing.assert_allclose(x_t.var(), 1 - a, rtol=0.03)


def test_v_prediction_inverts_to_eps_and_x0():
    rng = np.random.default_rng(0)
    x0, noise = (jnp.asarray(rng.normal(size=(3, 2, 2, 3)), jnp.float32) for _ in range(2))
    a = jnp.asarray([0.9, 0.5, 0.01])
    x_t = schedule.q_sample(x0, a, noise)
    eps, x0_hat = schedule.to_eps_and_x0(schedule.v_target(x0, a, noise), x_t, a, "v")
    np.testing.assert_allclose(eps, noise, atol=1e-5)
    np.testing.assert_allclose(x0_hat, x0, atol=1e-5)
