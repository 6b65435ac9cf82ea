"""Building blocks shared by the model families."""

import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging


def conv_kernel_init(rng: jax.Array, shape, dtype=jax.numpy.float32) -> jax.Array:
    """LeCun-normal conv kernel [kh, kw, in, out], drawn as its 2-D [kh*kw*in, out] view.

    Same fan-in and bit-identical values as `nn.initializers.lecun_normal()` on the 4-D shape,
    but XLA:CPU compiles the 2-D draw several times faster (1.2 s -> 0.3 s for a 3x3x3x16
    kernel), which dominates start-up time for small models.
    """
    flat = nn.initializers.lecun_normal()(rng, (math.prod(shape[:-1]), shape[-1]), dtype)
    return flat.reshape(shape)


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    kernel_init=conv_kernel_init,
    use_bias=True,
    dtype: Any = None,
) -> nn.Conv:
    """A square 'SAME' conv, by default with `conv_kernel_init`; `dtype` is the compute dtype
    (None: the inputs'), params stay float32."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        kernel_init=kernel_init,
        use_bias=use_bias,
        dtype=dtype,
    )


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
    """[B, H, W, C] -> [B, factor*H, factor*W, C], each pixel repeated. Followed by a conv, it is
    the decoders' upsampling: no checkerboard artifacts (Odena et al. 2016), and XLA:CPU's slow
    transposed-conv gradients avoided (the VAE step at 128²: 14.3 -> 3.7 s, docs/benchmarks.md)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


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
    dtype: Any = None  # Compute dtype; GroupNorm statistics are float32 whatever it is.

    @nn.compact
    def __call__(self, x, cond, *, train: bool):
        def norm(features):
            return nn.GroupNorm(min(self.groups, features), dtype=self.dtype)

        h = conv(self.features, 3, dtype=self.dtype)(nn.silu(norm(x.shape[-1])(x)))
        scale, shift = jnp.split(
            nn.Dense(2 * self.features, dtype=self.dtype)(nn.silu(cond)), 2, axis=-1
        )
        h = norm(self.features)(h)
        h = h * (1 + scale[:, None, None]) + shift[:, None, None]
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = conv(self.features, 3, kernel_init=nn.initializers.zeros, dtype=self.dtype)(h)
        if x.shape[-1] != self.features:
            x = conv(self.features, 1, dtype=self.dtype)(x)
        return x + h


# Set to 0 to keep cuDNN's attention out everywhere: the escape hatch where cuDNN accepts a call
# at trace time and then fails to compile it, which no fallback inside a jitted step can catch.
CUDNN_OPT_OUT = "HAM_SYNTH_CUDNN_ATTENTION"


def attention_implementation(query) -> str | None:
    """jax.nn.dot_product_attention's `implementation` for these queries [B, T, H, D]: "cudnn"
    (its fused flash-attention kernel) on a GPU for bfloat16 or float16 with D a multiple of 8
    up to 128, as cuDNN requires, unless $HAM_SYNTH_CUDNN_ATTENTION is 0; None (XLA's)
    elsewhere, which jax also picks by default."""
    head_width = query.shape[-1]
    fits = query.dtype in (jnp.bfloat16, jnp.float16) and head_width % 8 == 0 and head_width <= 128
    allowed = os.environ.get(CUDNN_OPT_OUT, "1") != "0"
    return "cudnn" if jax.default_backend() == "gpu" and fits and allowed else None


def fused_attention(
    query,
    key,
    value,
    mask=None,
    dropout_rng=None,
    dropout_rate: float = 0.0,
    broadcast_dropout: bool = True,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: nn.Module | None = None,
    force_fp32_for_softmax: bool = False,
    scale=None,
):
    """nn.MultiHeadDotProductAttention's `attention_fn`, through jax.nn.dot_product_attention:
    cuDNN's fused kernel where `attention_implementation` allows it and cuDNN accepts the call,
    XLA's otherwise (a float32 softmax either way), so the probabilities are never written out.
    When they are wanted (`module` is given: `sow_weights`, for attention maps) or attention
    dropout is on, flax's dot_product_attention, which materialises them, runs instead. `scale`
    multiplies the query-key products in place of 1 / sqrt(head width) (a learned temperature,
    for one); it rescales the query (in float32), so it may be traced and cuDNN still applies."""
    if scale is not None:  # Both paths divide by sqrt(head width) themselves.
        factor = scale * query.shape[-1] ** 0.5
        query = (query.astype(jnp.float32) * factor).astype(query.dtype)
    if module is not None or (dropout_rate > 0.0 and not deterministic):
        return nn.dot_product_attention(
            query, key, value, mask=mask, dropout_rng=dropout_rng, dropout_rate=dropout_rate,
            broadcast_dropout=broadcast_dropout, deterministic=deterministic, dtype=dtype,
            precision=precision, module=module, force_fp32_for_softmax=force_fp32_for_softmax,
        )  # fmt: skip
    if dtype is not None:
        query, key, value = (x.astype(dtype) for x in (query, key, value))
    if attention_implementation(query) == "cudnn":
        try:
            return jax.nn.dot_product_attention(
                query, key, value, mask=mask, implementation="cudnn"
            )
        except (ValueError, RuntimeError, NotImplementedError) as refusal:
            logging.log_first_n(
                logging.WARNING, "cuDNN attention refused %s; using XLA's: %s", 1,
                query.shape, refusal,
            )  # fmt: skip
    return jax.nn.dot_product_attention(query, key, value, mask=mask)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    num_heads: int = 4
    groups: int = 8
    dtype: Any = None  # Compute dtype; the softmax is float32 whatever it is.

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        tokens = nn.GroupNorm(min(self.groups, c), dtype=self.dtype)(x).reshape(b, h * w, c)
        out = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            out_kernel_init=nn.initializers.zeros,
            dtype=self.dtype,
            force_fp32_for_softmax=True,
            attention_fn=fused_attention,
        )(tokens)
        return x + out.reshape(b, h, w, c)
