"""Class- and time-conditioned UNet (Ho et al. 2020; ADM's AdaGN and null class for CFG)."""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ham_synth.models import layers


class UNet(nn.Module):
    """x_t, t, label -> the diffusion target (ε or v), same shape as x_t.

    Label `num_classes` is the null class: the unconditional model for classifier-free guidance.
    """

    num_classes: int
    channels: int = 64  # Width at full resolution.
    channel_mults: Sequence[int] = (1, 2, 2)  # One level per entry; each after the first halves.
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (8,)  # Feature-map sizes that get self-attention.
    num_heads: int = 4
    dropout: float = 0.0
    out_channels: int = 3
    norm_groups: int = 8  # GroupNorm's groups (Ho et al.: 32), at most the width.
    # Activations and matmuls (e.g. bfloat16); None: float32. Params, GroupNorm statistics and
    # the softmax are float32 whatever it is; the output is returned as float32 (the last
    # convolution computes it in this dtype).
    dtype: Any = None

    @nn.compact
    def __call__(self, x, t, labels, *, train: bool = False):
        emb_dim = 4 * self.channels
        dense = functools.partial(nn.Dense, emb_dim, dtype=self.dtype)
        conv = functools.partial(layers.conv, dtype=self.dtype)
        res_block = functools.partial(layers.ResBlock, dropout=self.dropout,
                                      groups=self.norm_groups, dtype=self.dtype)  # fmt: skip
        attention = functools.partial(layers.SelfAttention, self.num_heads,
                                      groups=self.norm_groups, dtype=self.dtype)  # fmt: skip
        for width in (self.channels * mult for mult in self.channel_mults):
            if width % min(self.norm_groups, width):
                raise ValueError(
                    f"model.norm_groups={self.norm_groups} does not divide the width {width} "
                    f"(model.channels={self.channels} x channel_mults); make the widths "
                    "multiples of it."
                )
        cond = layers.timestep_embedding(t, self.channels)
        cond = dense()(nn.silu(dense()(cond)))
        cond = cond + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype)(labels)

        def block(h, features):
            h = res_block(features)(h, cond, train=train)
            if h.shape[1] in self.attention_resolutions:
                h = attention()(h)
            return h

        factor = 2 ** (len(self.channel_mults) - 1)  # Each level after the first halves.
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(
                f"Image size {x.shape[1]}x{x.shape[2]} is not a multiple of {factor}, which "
                f"model.channel_mults={tuple(self.channel_mults)} needs; change one."
            )
        h = conv(self.channels, 3)(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(h, self.channels * mult)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = conv(h.shape[-1], 3, stride=2)(h)
                skips.append(h)

        h = res_block(h.shape[-1])(h, cond, train=train)
        h = attention()(h)
        h = res_block(h.shape[-1])(h, cond, train=train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), self.channels * mult)
            if level > 0:
                h = layers.upsample_nearest(h)
                h = conv(h.shape[-1], 3)(h)
        h = nn.silu(nn.GroupNorm(min(self.norm_groups, h.shape[-1]), dtype=self.dtype)(h))
        out = conv(self.out_channels, 3, kernel_init=nn.initializers.zeros)(h)
        return out.astype(jnp.float32)
