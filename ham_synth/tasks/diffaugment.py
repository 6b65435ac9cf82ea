"""Differentiable augmentation for GAN training on small data (DiffAugment, Zhao et al. 2020;
the adaptive probability of StyleGAN2-ADA, Karras et al. 2020).

The same function of (images, rng) is applied to real and generated images inside the train
step, so D never sees unaugmented images and gradients flow back to G through it. Images are
float32[B, H, W, C] in [-1, 1]; each op is applied to each image with probability p.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

TRANSLATION_RATIO = 0.125  # Shifts of up to 1/8 of the image, zero filled (DiffAugment's).
CUTOUT_RATIO = 0.5  # A zeroed square half the image's side (DiffAugment's).


def color(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Brightness (+U(-0.5, 0.5)), saturation (x U(0, 2)) and contrast (x U(0.5, 1.5)) per image."""
    b = images.shape[0]
    brightness_rng, saturation_rng, contrast_rng = jax.random.split(rng, 3)
    x = images + jax.random.uniform(brightness_rng, (b, 1, 1, 1)) - 0.5
    mean = x.mean(axis=-1, keepdims=True)
    x = (x - mean) * (2.0 * jax.random.uniform(saturation_rng, (b, 1, 1, 1))) + mean
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (jax.random.uniform(contrast_rng, (b, 1, 1, 1)) + 0.5) + mean


def translation(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Shifts each image by whole pixels, up to TRANSLATION_RATIO of its size, filling zeros."""
    b, h, w, c = images.shape
    sh, sw = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    dy_rng, dx_rng = jax.random.split(rng)
    dy = jax.random.randint(dy_rng, (b,), -sh, sh + 1)
    dx = jax.random.randint(dx_rng, (b,), -sw, sw + 1)
    padded = jnp.pad(images, ((0, 0), (sh, sh), (sw, sw), (0, 0)))

    def shift(image, y, x):
        return jax.lax.dynamic_slice(image, (sh - y, sw - x, 0), (h, w, c))

    return jax.vmap(shift)(padded, dy, dx)


def cutout(images: jax.Array, rng: jax.Array) -> jax.Array:
    """Zeroes one square of side CUTOUT_RATIO x the image size per image, at a random place."""
    b, h, w, _ = images.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    y_rng, x_rng = jax.random.split(rng)
    # The square's centre may sit anywhere, so it is cut off at the borders as in DiffAugment.
    top = jax.random.randint(y_rng, (b, 1, 1), 0, h + (1 - ch % 2)) - ch // 2
    left = jax.random.randint(x_rng, (b, 1, 1), 0, w + (1 - cw % 2)) - cw // 2
    rows = jnp.arange(h)[None, :, None]
    cols = jnp.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return images * (~inside)[..., None].astype(images.dtype)


OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """ "translation,cutout,color" -> the ops in order; empty: none. Unknown names fail."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in OPS]
    if unknown:
        raise ValueError(f"gan.augment has unknown ops {unknown}; choose from {sorted(OPS)}.")
    return names


def augment(images: jax.Array, rng: jax.Array, p: jax.Array, policy: Sequence[str]) -> jax.Array:
    """Each op of `policy`, in order, applied to each image with probability `p`."""
    for name, op_rng in zip(policy, jax.random.split(rng, max(len(policy), 1)), strict=False):
        apply_rng, params_rng = jax.random.split(op_rng)
        applied = jax.random.uniform(apply_rng, (images.shape[0], 1, 1, 1)) < p
        images = jnp.where(applied, OPS[name](images, params_rng), images)
    return images
