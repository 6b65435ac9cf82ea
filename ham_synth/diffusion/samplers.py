"""Samplers: pure functions that run a denoiser from noise to images in one lax.scan.

All three walk the same descending timesteps t_0 > ... > t_{S-1} and end at ᾱ = 1 (clean x_0):
- "ddpm": ancestral sampling from the posterior q(x_prev | x_t, x̂_0) (Ho et al. 2020);
- "ddim": DDIM with stochasticity η (Song et al. 2021); η=0 is the deterministic ODE sampler;
- "dpmpp_2m": DPM-Solver++(2M), second-order multistep in data prediction (Lu et al. 2022).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ham_synth.diffusion import schedule

# (x_t, t int32[B], labels int32[B]) -> the network's raw prediction (ε or v).
ModelFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def timesteps(num_train_steps: int, num_steps: int) -> np.ndarray:
    """S descending steps, evenly spaced, starting at T-1 ("trailing", Lin et al. 2024)."""
    if not 1 <= num_steps <= num_train_steps:
        raise ValueError(f"steps must be in 1..{num_train_steps}, got {num_steps}.")
    # diffusers' trailing grid; its float stride can leave a last value of ~1e-13 > 0 (e.g. T
    # 1000, S 61), one step too many, which rounds to step -1: keep the first S.
    grid = np.arange(num_train_steps, 0, -num_train_steps / num_steps)[:num_steps]
    return np.round(grid).astype(np.int32) - 1


def guided(model_fn: ModelFn, guidance: float, null_label: int) -> ModelFn:
    """Classifier-free guidance: pred_c + w (pred_c - pred_null); w=0 is the conditional model."""
    if guidance == 0:
        return model_fn

    def guided_fn(x, t, labels):
        both = model_fn(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([labels, jnp.full_like(labels, null_label)]),
        )
        cond, uncond = jnp.split(both, 2)
        return cond + guidance * (cond - uncond)

    return guided_fn


def ddpm_step(x, eps, x0, a, a_next, noise, **_):
    """Draws from the posterior q(x_next | x_t, x̂_0): its mean plus its std times noise."""
    del eps
    beta = 1 - a / a_next
    mean = (jnp.sqrt(a_next) * beta * x0 + jnp.sqrt(a / a_next) * (1 - a_next) * x) / (1 - a)
    return mean + jnp.sqrt(schedule.posterior_variance(a, a_next)) * noise


def ddim_step(x, eps, x0, a, a_next, noise, *, eta, **_):
    """x_next = sqrt(ᾱ_next) x̂_0 + sqrt(1 - ᾱ_next - σ²) ε̂ + σ noise, σ = η * posterior std."""
    del x
    sigma = eta * jnp.sqrt(schedule.posterior_variance(a, a_next))
    direction = jnp.sqrt(jnp.maximum(1 - a_next - sigma**2, 0.0))
    return jnp.sqrt(a_next) * x0 + direction * eps + sigma * noise


def dpmpp_2m_step(x, eps, x0, a, a_next, noise, *, x0_prev, h_prev, second_order, **_):
    """One DPM-Solver++(2M) step; the last step (to σ=0) and the first are first order."""
    del eps, noise
    alpha, sigma = jnp.sqrt(a), jnp.sqrt(1 - a)
    alpha_next, sigma_next = jnp.sqrt(a_next), jnp.sqrt(1 - a_next)
    exp_neg_h = (sigma_next * alpha) / (alpha_next * sigma)  # e^{-h}, h = λ_next - λ.
    h = -jnp.log(jnp.maximum(exp_neg_h, 1e-30))
    r = h_prev / jnp.where(second_order, h, 1.0)
    data = jnp.where(second_order, (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev, x0)
    return (sigma_next / sigma) * x + alpha_next * (1 - exp_neg_h) * data, h


def sample(
    model_fn: ModelFn,
    labels: jax.Array,
    rng: jax.Array,
    *,
    shape: tuple[int, ...],
    alphas_cumprod: np.ndarray,
    prediction: str,
    sampler: str,
    num_steps: int,
    eta: float = 0.0,
    clip_denoised: bool = True,
) -> jax.Array:
    """Images float32[B, *shape] (in [-1, 1] if `clip_denoised`), deterministic given `rng`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}.")
    ts = timesteps(len(alphas_cumprod), num_steps)
    a_t = alphas_cumprod[ts]
    a_next = np.append(alphas_cumprod[ts[1:]], 1.0)
    xs = (
        jnp.arange(num_steps),
        jnp.asarray(ts),
        jnp.asarray(a_t, jnp.float32),
        jnp.asarray(a_next, jnp.float32),
    )
    batch = labels.shape[0]
    init_rng, step_rng = jax.random.split(rng)
    x_T = jax.random.normal(init_rng, (batch, *shape), jnp.float32)

    def body(carry, step_inputs):
        x, x0_prev, h_prev = carry
        i, t, a, a_n = step_inputs
        pred = model_fn(x, jnp.full((batch,), t, jnp.int32), labels)
        eps, x0 = schedule.to_eps_and_x0(pred, x, jnp.full((batch,), a), prediction)
        if clip_denoised:
            x0 = jnp.clip(x0, -1.0, 1.0)
            eps = (x - jnp.sqrt(a) * x0) / jnp.sqrt(1 - a)
        noise = jax.random.normal(jax.random.fold_in(step_rng, i), x.shape, x.dtype)
        second_order = (i > 0) & (i < num_steps - 1)
        out = SAMPLERS[sampler](
            x,
            eps,
            x0,
            a,
            a_n,
            noise,
            eta=eta,
            x0_prev=x0_prev,
            h_prev=h_prev,
            second_order=second_order,
        )
        x_next, h = out if isinstance(out, tuple) else (out, h_prev)
        return (x_next, x0, h), None

    (x, _, _), _ = jax.lax.scan(body, (x_T, jnp.zeros_like(x_T), jnp.float32(1.0)), xs)
    return jnp.clip(x, -1.0, 1.0) if clip_denoised else x


SAMPLERS = {"ddpm": ddpm_step, "ddim": ddim_step, "dpmpp_2m": dpmpp_2m_step}
