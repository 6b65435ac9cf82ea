"""Small grain transforms, one job each, applied per record before batching.

Augmentation ops are `grain.transforms.RandomMap`s on the uint8 record, chosen by an op string
(`parse_ops("flip_lr|rotate(15)|zoom(0.9,1.1)")`); grain seeds each record's rng, so a restored
iterator redraws the same augmentation.
"""

import dataclasses
import inspect
import math
import re

import grain
import numpy as np
from PIL import Image


class ToModelInputs(grain.transforms.Map):
    """uint8 image -> float32 in [-1, 1]; keeps only the numeric fields the model sees."""

    def map(self, record: dict) -> dict:
        image = record["image"].astype(np.float32) * (2.0 / 255.0) - 1.0
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "index": np.int32(record["index"]),
        }


# --- Geometry helpers: pure functions of a uint8[H, W, 3] image ---


def _reflect_indices(size: int, pad: int) -> np.ndarray:
    """Indices -pad..size+pad-1 folded back into 0..size-1 by mirroring at the borders
    (numpy's "reflect": the edge pixel is not repeated)."""
    period = max(2 * (size - 1), 1)
    folded = np.arange(-pad, size + pad) % period
    return np.where(folded >= size, period - folded, folded)


def _reflect_pad(image: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """Mirror-pads the borders (one gather, cheaper than np.pad), so rotated or zoomed-out images
    have no black corners, which a generator would learn as a lesion feature."""
    h, w = image.shape[:2]
    return image[_reflect_indices(h, pad_h)[:, None], _reflect_indices(w, pad_w)[None, :]]


def rotate_image(image: np.ndarray, degrees: float) -> np.ndarray:
    """`image` rotated counter-clockwise about its centre, same shape, bilinear; the corners
    reflect the border (reflect-pad, then one PIL affine sampling only the output window)."""
    h, w = image.shape[:2]
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    # The output window, rotated back, spans this box of the source; pad up to it.
    pad_h = math.ceil((w * abs(sin) + h * abs(cos) - h) / 2) + 1
    pad_w = math.ceil((w * abs(cos) + h * abs(sin) - w) / 2) + 1
    padded = Image.fromarray(_reflect_pad(image, pad_h, pad_w))
    # Output (x, y) samples the source at R(-theta) (x - cx, y - cy) + padded centre, as PIL's
    # own rotate does, but over the output window only.
    cx, cy = w / 2, h / 2
    a, b, d, e = cos, -sin, sin, cos
    matrix = (a, b, pad_w + cx - a * cx - b * cy, d, e, pad_h + cy - d * cx - e * cy)
    return np.asarray(padded.transform((w, h), Image.AFFINE, matrix, resample=Image.BILINEAR))


def zoom_image(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` magnified `scale` times about its centre, same shape: > 1 zooms in (crops),
    < 1 zooms out (the reflected border fills the margin)."""
    h, w = image.shape[:2]
    src_h, src_w = h / scale, w / scale
    pad_h = math.ceil(max(0.0, (src_h - h) / 2))
    pad_w = math.ceil(max(0.0, (src_w - w) / 2))
    if pad_h or pad_w:
        image = _reflect_pad(image, pad_h, pad_w)
    cy, cx = pad_h + h / 2, pad_w + w / 2
    box = (cx - src_w / 2, cy - src_h / 2, cx + src_w / 2, cy + src_h / 2)
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR, box=box))


def jitter_colors(
    image: np.ndarray, brightness: float, contrast: float, saturation: float
) -> np.ndarray:
    """Scales brightness, then contrast (about the mean gray), then saturation (about each
    pixel's gray) by the given factors (1 = unchanged); clipped back to uint8."""
    luma = np.asarray([0.299, 0.587, 0.114], np.float32)
    x = image.astype(np.float32) * brightness
    mean_gray = (x @ luma).mean()
    x = mean_gray + (x - mean_gray) * contrast
    gray = (x @ luma)[..., None]
    x = gray + (x - gray) * saturation
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --- Augmentation ops: RandomMaps on records {"image": uint8[H, W, 3], ...} ---


def _with_image(record: dict, image: np.ndarray) -> dict:
    """A new record with `image` replaced; never mutates the source's arrays."""
    return {**record, "image": image}


@dataclasses.dataclass(frozen=True)
class FlipLR(grain.transforms.RandomMap):
    """Mirrors left-right with probability 1/2."""

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        return _with_image(record, record["image"][:, ::-1]) if rng.random() < 0.5 else record


@dataclasses.dataclass(frozen=True)
class FlipUD(grain.transforms.RandomMap):
    """Mirrors top-bottom with probability 1/2 (dermoscopy has no canonical up)."""

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        return _with_image(record, record["image"][::-1]) if rng.random() < 0.5 else record


@dataclasses.dataclass(frozen=True)
class Rotate(grain.transforms.RandomMap):
    """Rotates by a uniform angle in [-max_degrees, max_degrees]; see `rotate_image`."""

    max_degrees: float

    def __post_init__(self):
        if not 0 <= self.max_degrees <= 180:
            raise ValueError(f"rotate(max_degrees={self.max_degrees}): use 0..180.")

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        degrees = rng.uniform(-self.max_degrees, self.max_degrees)
        return _with_image(record, rotate_image(record["image"], degrees))


@dataclasses.dataclass(frozen=True)
class Zoom(grain.transforms.RandomMap):
    """Zooms by a scale log-uniform in [min_scale, max_scale] (so 0.5..2 is symmetric about 1);
    see `zoom_image`."""

    min_scale: float
    max_scale: float

    def __post_init__(self):
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f"zoom(min_scale={self.min_scale}, max_scale={self.max_scale}): "
                "need 0 < min_scale <= max_scale."
            )

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        scale = math.exp(rng.uniform(math.log(self.min_scale), math.log(self.max_scale)))
        return _with_image(record, zoom_image(record["image"], scale))


@dataclasses.dataclass(frozen=True)
class ColorJitter(grain.transforms.RandomMap):
    """Brightness, contrast and saturation factors each uniform in [1 - x, 1 + x]."""

    brightness: float
    contrast: float
    saturation: float

    def __post_init__(self):
        amounts = (self.brightness, self.contrast, self.saturation)
        if not all(0 <= a <= 1 for a in amounts):
            raise ValueError(f"color_jitter{amounts}: each amount must be in [0, 1].")

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        amounts = np.asarray([self.brightness, self.contrast, self.saturation])
        factors = rng.uniform(1 - amounts, 1 + amounts)
        return _with_image(record, jitter_colors(record["image"], *factors))


_OPS = {
    "flip_lr": FlipLR,
    "flip_ud": FlipUD,
    "rotate": Rotate,
    "zoom": Zoom,
    "color_jitter": ColorJitter,
}
_OP_PATTERN = re.compile(r"^\s*(\w+)\s*(?:\((.*)\))?\s*$")


def _signature(name: str) -> str:
    """`zoom(min_scale, max_scale)`: how an op is written, for error messages."""
    fields = inspect.signature(_OPS[name]).parameters
    return f"{name}({', '.join(fields)})" if fields else name


def parse_ops(spec: str) -> list[grain.transforms.RandomMap]:
    """`"flip_lr|rotate(15)|zoom(0.9,1.1)"` -> the ops in order; "" -> []. Arguments are numbers."""
    ops = []
    for token in filter(str.strip, spec.split("|")):
        match = _OP_PATTERN.match(token)
        if match is None:
            raise ValueError(f"Bad augment op {token.strip()!r} in {spec!r}; write name(a,b).")
        name = match.group(1)
        if name not in _OPS:
            valid = ", ".join(_signature(n) for n in _OPS)
            raise ValueError(f"Unknown augment op {name!r} in {spec!r}; choose from: {valid}.")
        args = match.group(2) or ""
        try:  # float() and the op's own checks raise ValueError; a wrong arg count TypeError.
            values = [float(a) for a in filter(str.strip, args.split(","))]
            ops.append(_OPS[name](*values))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Bad augment op {token.strip()!r} in {spec!r}: {str(error).rstrip('.')}. "
                f"Write it as {_signature(name)} with numbers."
            ) from error
    return ops
