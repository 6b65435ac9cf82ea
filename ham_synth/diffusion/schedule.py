"""Noise schedules, the forward process q(x_t | x_0), and conversions between what a network
predicts (ε or v) and the (ε, x_0) pair every sampler works with."""

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("eps", "v")


def make_betas(kind: str, num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """float64[T]: "linear" (Ho et al. 2020) or "cosine" (Nichol & Dhariwal 2021, s=0.008)."""
    if kind == "linear":
        return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)
    if kind == "cosine":
        s = 0.008
        steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
        return np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    raise ValueError(f"Unknown diffusion.schedule {kind!r}; choose 'linear' or 'cosine'.")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """ᾱ_t = Π_{s<=t} (1 - β_s), float64[T]."""
    return np.cumprod(1.0 - betas)


def _per_example(values: jax.Array) -> jax.Array:
    return values.reshape(-1, 1, 1, 1)


def q_sample(x0: jax.Array, alpha_bar_t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, with ᾱ_t[B] per example."""
    a = _per_example(alpha_bar_t)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * noise


def v_target(x0: jax.Array, alpha_bar_t: jax.Array, noise: jax.Array) -> jax.Array:
    """v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho 2022)."""
    a = _per_example(alpha_bar_t)
    return jnp.sqrt(a) * noise - jnp.sqrt(1 - a) * x0


def to_eps_and_x0(
    prediction: jax.Array, x_t: jax.Array, alpha_bar_t: jax.Array, kind: str
) -> tuple[jax.Array, jax.Array]:
    """A network's ε- or v-prediction at x_t -> (ε, x_0) estimates."""
    a = _per_example(alpha_bar_t)
    if kind == "eps":
        return prediction, (x_t - jnp.sqrt(1 - a) * prediction) / jnp.sqrt(a)
    if kind == "v":
        return jnp.sqrt(1 - a) * x_t + jnp.sqrt(a) * prediction, jnp.sqrt(a) * x_t - jnp.sqrt(
            1 - a
        ) * prediction
    raise ValueError(f"Unknown diffusion.prediction {kind!r}; choose one of {PREDICTIONS}.")


def posterior_variance(alpha_bar_t, alpha_bar_prev):
    """Var q(x_prev | x_t, x_0) = (1 - ᾱ_prev) / (1 - ᾱ_t) * (1 - ᾱ_t / ᾱ_prev)."""
    return (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
