"""Building blocks shared by the model families."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv_kernel_init(rng: jax.Array, shape, dtype=jax.numpy.float32) -> jax.Array:
    """LeCun-normal conv kernel [kh, kw, in, out], drawn as its 2-D [kh*kw*in, out] view.

    Same fan-in and bit-identical values as `nn.initializers.lecun_normal()` on the 4-D shape,
    but XLA:CPU compiles the 2-D draw several times faster (1.2 s -> 0.3 s for a 3x3x3x16
    kernel), which dominates start-up time for small models.
    """
    flat = nn.initializers.lecun_normal()(rng, (math.prod(shape[:-1]), shape[-1]), dtype)
    return flat.reshape(shape)


def conv(
    features: int, kernel: int, stride: int = 1, kernel_init=conv_kernel_init, use_bias=True
) -> nn.Conv:
    """A square 'SAME' conv, by default with `conv_kernel_init`."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        kernel_init=kernel_init,
        use_bias=use_bias,
    )


def conv_transpose(features: int, kernel: int, stride: int) -> nn.ConvTranspose:
    """A square 'SAME' transposed conv (upsamples by `stride`) with `conv_kernel_init`."""
    return nn.ConvTranspose(
        features, (kernel, kernel), strides=(stride, stride), kernel_init=conv_kernel_init
    )


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
    """Sinusoidal embedding of (possibly fractional) timesteps t[B] -> float32[B, dim]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the conditioning vector as a per-channel scale and shift
    of the second norm (ADM's AdaGN), so every block sees the time step and the class."""

    features: int
    dropout: float = 0.0
    groups: int = 8

    @nn.compact
    def __call__(self, x, cond, *, train: bool):
        h = conv(self.features, 3)(nn.silu(nn.GroupNorm(min(self.groups, x.shape[-1]))(x)))
        scale, shift = jnp.split(nn.Dense(2 * self.features)(nn.silu(cond)), 2, axis=-1)
        h = nn.GroupNorm(min(self.groups, self.features))(h)
        h = h * (1 + scale[:, None, None]) + shift[:, None, None]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv(self.features, 3, kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1)(x)
        return x + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    num_heads: int = 4
    groups: int = 8

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = nn.GroupNorm(min(self.groups, c))(x).reshape(b, h * w, c)
        out = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, out_kernel_init=nn.initializers.zeros
        )(tokens)
        return x + out.reshape(b, h, w, c)
