"""Class-conditional convolutional VAE: q(z | x, y) as (mean, logvar) and p(x | z, y)."""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ham_synth.models import layers


class Encoder(nn.Module):
    """Strided convs over the image plus a broadcast class embedding -> (mean, logvar)."""

    channels: Sequence[int]
    latent_dim: int
    dtype: Any = None  # Compute dtype; None: float32. The outputs are float32.

    @nn.compact
    def __call__(self, images, class_embedding):
        b, h, w, _ = images.shape
        cond = jnp.broadcast_to(
            class_embedding[:, None, None, :], (b, h, w, class_embedding.shape[-1])
        )
        x = jnp.concatenate([images, cond], axis=-1)
        for width in self.channels:
            x = nn.silu(layers.conv(width, 3, dtype=self.dtype)(x))
            x = nn.silu(layers.conv(width, 4, stride=2, dtype=self.dtype)(x))
        x = x.reshape(b, -1)
        mean = nn.Dense(self.latent_dim, dtype=self.dtype, name="mean")(x)
        logvar = nn.Dense(self.latent_dim, dtype=self.dtype, name="logvar")(x)
        return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class Decoder(nn.Module):
    """[z, class embedding] -> a small feature map -> (2x nearest upsampling, conv) per level
    -> image in [-1, 1]."""

    channels: Sequence[int]
    image_size: int
    out_channels: int = 3
    dtype: Any = None  # Compute dtype; None: float32. The image is float32.

    @nn.compact
    def __call__(self, z, class_embedding):
        base = self.image_size // 2 ** len(self.channels)
        x = jnp.concatenate([z, class_embedding], axis=-1)
        x = nn.silu(nn.Dense(base * base * self.channels[-1], dtype=self.dtype)(x))
        x = x.reshape(z.shape[0], base, base, self.channels[-1])
        for width in reversed(self.channels):
            x = layers.upsample_nearest(x)
            x = nn.silu(layers.conv(width, 3, dtype=self.dtype)(x))
            x = nn.silu(layers.conv(width, 3, dtype=self.dtype)(x))
        x = layers.conv(self.out_channels, 3, dtype=self.dtype)(x)
        return jnp.tanh(x.astype(jnp.float32))


class VAE(nn.Module):
    """`__call__` reconstructs (drawing z with the `latent` rng); `decode` samples given z."""

    num_classes: int
    image_size: int
    channels: Sequence[int] = (32, 64)
    latent_dim: int = 16
    class_embed_dim: int = 16
    dtype: Any = None  # Compute dtype of the encoder and decoder; None: float32.

    def setup(self):
        if self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**len(channels)="
                f"{2 ** len(self.channels)}."
            )
        self.class_embed = nn.Embed(self.num_classes, self.class_embed_dim)
        self.encoder = Encoder(self.channels, self.latent_dim, dtype=self.dtype)
        self.decoder = Decoder(self.channels, self.image_size, dtype=self.dtype)

    def __call__(self, images, labels):
        """Returns (reconstruction, mean, logvar) for float images [B, H, W, 3], int32 labels."""
        embedding = self.class_embed(labels)
        mean, logvar = self.encoder(images, embedding)
        eps = jax.random.normal(self.make_rng("latent"), mean.shape, mean.dtype)
        z = mean + jnp.exp(0.5 * logvar) * eps
        return self.decoder(z, embedding), mean, logvar

    def decode(self, z, labels):
        return self.decoder(z, self.class_embed(labels))
