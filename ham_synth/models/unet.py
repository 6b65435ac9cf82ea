"""Class- and time-conditioned UNet (Ho et al. 2020; ADM's AdaGN and null class for CFG)."""

from collections.abc import Sequence

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

    @nn.compact
    def __call__(self, x, t, labels, *, train: bool = False):
        emb_dim = 4 * self.channels
        cond = layers.timestep_embedding(t, self.channels)
        cond = nn.Dense(emb_dim)(nn.silu(nn.Dense(emb_dim)(cond)))
        cond = cond + nn.Embed(self.num_classes + 1, emb_dim)(labels)

        def block(h, features):
            h = layers.ResBlock(features, self.dropout)(h, cond, train=train)
            if h.shape[1] in self.attention_resolutions:
                h = layers.SelfAttention(self.num_heads)(h)
            return h

        h = layers.conv(self.channels, 3)(x)
        skips = [h]
        for level, mult in enumerate(self.channel_mults):
            for _ in range(self.num_res_blocks):
                h = block(h, self.channels * mult)
                skips.append(h)
            if level < len(self.channel_mults) - 1:
                h = layers.conv(h.shape[-1], 3, stride=2)(h)
                skips.append(h)

        h = layers.ResBlock(h.shape[-1], self.dropout)(h, cond, train=train)
        h = layers.SelfAttention(self.num_heads)(h)
        h = layers.ResBlock(h.shape[-1], self.dropout)(h, cond, train=train)

        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for _ in range(self.num_res_blocks + 1):
                h = block(jnp.concatenate([h, skips.pop()], axis=-1), self.channels * mult)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # Nearest-neighbour 2x.
                h = layers.conv(h.shape[-1], 3)(h)
        h = nn.silu(nn.GroupNorm(min(8, h.shape[-1]))(h))
        return layers.conv(self.out_channels, 3, kernel_init=nn.initializers.zeros)(h)
