"""A class-conditional GAN: an SNGAN/DCGAN-style generator with class-conditional BatchNorm, and a
projection discriminator (Miyato & Koyama 2018) with spectral normalization on every layer.

One class count covers both uses: `num_classes=1` is unconditional (plain BatchNorm, no
projection term).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ham_synth.models import layers

LEAKY_SLOPE = 0.1  # SNGAN's discriminator activation.


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (1 + gain, so it starts as plain
    BN). Statistics are over the whole batch axis: under jit with the batch split over the mesh
    that is the global batch, so 1 and 8 devices normalize alike."""

    num_classes: int
    momentum: float = 0.99
    dtype: Any = None  # Compute dtype; the batch statistics are float32 whatever it is.

    @nn.compact
    def __call__(self, x, labels, train: bool):
        conditional = self.num_classes > 1
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=self.momentum,
            use_scale=not conditional,
            use_bias=not conditional,
            dtype=self.dtype,
        )(x)
        if not conditional:
            return x
        features = x.shape[-1]
        embed = functools.partial(
            nn.Embed,
            self.num_classes,
            features,
            embedding_init=nn.initializers.zeros,
            dtype=self.dtype,
        )
        gain = embed()(labels)
        bias = embed()(labels)
        return x * (1.0 + gain[:, None, None, :]) + bias[:, None, None, :]


class Generator(nn.Module):
    """z float32[B, latent_dim], labels int32[B] -> images float32[B, S, S, 3] in [-1, 1].

    `channels` run from the coarsest level to the finest: the first is at S / 2**(levels - 1)
    (4 for 16² with three levels, 7 for 28²), each next one doubles the size.
    """

    num_classes: int
    image_size: int
    channels: Sequence[int] = (128, 64, 32)
    bn_momentum: float = 0.99
    dtype: Any = None  # Compute dtype; None: float32. The image is float32.

    @nn.compact
    def __call__(self, z, labels, train: bool = False):
        upsamplings = len(self.channels) - 1
        base = self.image_size // 2**upsamplings
        if base * 2**upsamplings != self.image_size:
            raise ValueError(
                f"model.gen_channels has {len(self.channels)} levels, so image_size="
                f"{self.image_size} must be a multiple of {2**upsamplings}."
            )
        # No biases before a BatchNorm: it removes them, and Adam would step on their zero grads.
        norm = functools.partial(
            ConditionalBatchNorm, self.num_classes, self.bn_momentum, dtype=self.dtype
        )
        x = nn.Dense(base * base * self.channels[0], use_bias=False, dtype=self.dtype)(z)
        x = x.reshape(z.shape[0], base, base, self.channels[0])
        for i, width in enumerate(self.channels):
            x = nn.relu(norm()(x, labels, train))
            if i > 0:
                x = layers.upsample_nearest(x)
            x = layers.conv(width, 3, use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(norm()(x, labels, train))
        return jnp.tanh(layers.conv(3, 3, dtype=self.dtype)(x).astype(jnp.float32))


def spectral(layer: nn.Module) -> nn.SpectralNorm:
    """`layer` with its kernel divided by its largest singular value (one power iteration per
    call; the estimate lives in the `batch_stats` collection)."""
    return nn.SpectralNorm(layer)


class DiscriminatorFeatures(nn.Module):
    """phi(x): SN convs (each level a 3x3 conv and a 4x4 stride-2 conv), then a global sum pool:
    float32[B, channels[-1]]."""

    channels: Sequence[int]
    dtype: Any = None  # Compute dtype; None: float32. The power iteration stays float32.

    @nn.compact
    def __call__(self, images, update_stats: bool):
        x = images
        convs = [
            (width, kernel, stride)
            for width in self.channels
            for kernel, stride in ((3, 1), (4, 2))
        ]
        for width, kernel, stride in [*convs, (self.channels[-1], 3, 1)]:
            layer = spectral(layers.conv(width, kernel, stride=stride, dtype=self.dtype))
            x = nn.leaky_relu(layer(x, update_stats=update_stats), LEAKY_SLOPE)
        return jnp.sum(x.astype(jnp.float32), axis=(1, 2))


class Discriminator(nn.Module):
    """images float32[B, S, S, 3], labels int32[B] -> logits float32[B].

    D(x, y) = psi(phi(x)) + <embed(y), phi(x)>: phi is DiscriminatorFeatures, psi an SN linear
    layer, embed an SN class embedding (absent when there is one class).
    """

    num_classes: int
    channels: Sequence[int] = (32, 64, 128)
    dtype: Any = None  # Compute dtype of the convs; the head and the logits are float32.

    def setup(self):
        self.phi = DiscriminatorFeatures(self.channels, dtype=self.dtype)
        self.psi = spectral(nn.Dense(1))
        if self.num_classes > 1:
            self.embed = spectral(nn.Embed(self.num_classes, self.channels[-1]))

    def features(self, images, update_stats: bool = False):
        return self.phi(images, update_stats)

    def __call__(self, images, labels, update_stats: bool = False):
        phi = self.phi(images, update_stats)
        logits = self.psi(phi, update_stats=update_stats)[:, 0]
        if self.num_classes > 1:
            embedding = self.embed(labels, update_stats=update_stats)
            logits = logits + jnp.sum(embedding * phi, axis=-1)
        return logits
