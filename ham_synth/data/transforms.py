"""Small grain transforms, one job each, applied per record before batching.

Augmentation ops are `grain.transforms.RandomMap`s on the uint8 record, chosen by an op string
(`parse_ops("flip_lr|rotate(15)|zoom(0.9,1.1)")`); grain seeds each record's rng, so a restored
iterator redraws the same augmentation. The deterministic ops (`resize`, `center_crop`) also
serve evaluation preprocessing (`parse_ops(spec, deterministic=True)`, `apply_ops`).
"""

import dataclasses
import inspect
import math
import re

import grain
import numpy as np
from PIL import Image


class ToModelInputs(grain.transforms.Map):
    """uint8 image -> float32 in [-1, 1]; keeps only the numeric fields the model sees, and
    whether the record is synthetic (data.synthetic; False for real records)."""

    def map(self, record: dict) -> dict:
        image = record["image"].astype(np.float32) * (2.0 / 255.0) - 1.0
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "index": np.int32(record["index"]),
            "synthetic": np.bool_(record.get("synthetic", False)),
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
    return resample_box(image, box, (h, w))


def resample_box(image: np.ndarray, box: tuple, size: tuple[int, int]) -> np.ndarray:
    """The (left, top, right, bottom) box of `image` (fractional corners allowed) resampled to
    size (H, W), bilinear: PIL's resize over a box."""
    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR, box=box))


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


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """`image` resized to size x size, bicubic (antialiased when shrinking, as PIL does)."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def crop_image(image: np.ndarray, size: int, top: int, left: int) -> np.ndarray:
    return image[top : top + size, left : left + size]


def check_crop(image: np.ndarray, size: int, op: str) -> None:
    h, w = image.shape[:2]
    if size > min(h, w):
        raise ValueError(
            f"{op}({size}) on a {h}x{w} image: the crop must fit; prepare the data at a larger "
            "data.image_size or crop smaller."
        )


def center_offsets(image: np.ndarray, size: int) -> tuple[int, int]:
    """The top-left corner of the central crop, rounded as torchvision's CenterCrop does."""
    h, w = image.shape[:2]
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


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


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
    """A size x size crop at a uniformly drawn position."""

    size: int

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        image = record["image"]
        check_crop(image, self.size, "random_crop")
        top = int(rng.integers(image.shape[0] - self.size + 1))
        left = int(rng.integers(image.shape[1] - self.size + 1))
        return _with_image(record, crop_image(image, self.size, top, left))


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop(grain.transforms.RandomMap):
    """Inception-style crop, resized back to the image's size (bilinear): its area a uniform
    share in [min_area, max_area] of the image's, its aspect ratio log-uniform in [3/4, 4/3],
    placed uniformly (torchvision's RandomResizedCrop, with the area capped so the box fits)."""

    min_area: float
    max_area: float = 1.0

    def __post_init__(self):
        if not 0 < self.min_area <= self.max_area <= 1:
            raise ValueError(
                f"random_resized_crop(min_area={self.min_area}, max_area={self.max_area}): "
                "need 0 < min_area <= max_area <= 1."
            )

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        image = record["image"]
        h, w = image.shape[:2]
        area = rng.uniform(self.min_area, self.max_area) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))  # width / height
        crop_w = min(math.sqrt(area * aspect), w)
        crop_h = min(math.sqrt(area / aspect), h)
        top = rng.uniform(0, h - crop_h)
        left = rng.uniform(0, w - crop_w)
        box = (left, top, left + crop_w, top + crop_h)
        return _with_image(record, resample_box(image, box, (h, w)))


class DeterministicOp(grain.transforms.RandomMap):
    """An op that draws nothing: `apply(image)`, also usable outside grain (evaluation)."""

    def apply(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def random_map(self, record: dict, rng: np.random.Generator) -> dict:
        del rng
        return _with_image(record, self.apply(record["image"]))


@dataclasses.dataclass(frozen=True)
class CenterCrop(DeterministicOp):
    """The central size x size crop."""

    size: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        check_crop(image, self.size, "center_crop")
        return crop_image(image, self.size, *center_offsets(image, self.size))


@dataclasses.dataclass(frozen=True)
class Resize(DeterministicOp):
    """Resized to size x size; see `resize_image`."""

    size: int

    def apply(self, image: np.ndarray) -> np.ndarray:
        return resize_image(image, self.size)


_OPS = {
    "random_crop": RandomCrop,
    "random_resized_crop": RandomResizedCrop,
    "center_crop": CenterCrop,
    "resize": Resize,
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


_INT_OPS = (RandomCrop, CenterCrop, Resize)  # Their argument is a size in pixels.


def parse_ops(spec: str, deterministic: bool = False) -> list[grain.transforms.RandomMap]:
    """`"flip_lr|rotate(15)|zoom(0.9,1.1)"` -> the ops in order; "" -> []. Arguments are numbers.
    `deterministic`: only ops that draw nothing (evaluation preprocessing)."""
    ops = []
    for token in filter(str.strip, spec.split("|")):
        match = _OP_PATTERN.match(token)
        if match is None:
            raise ValueError(f"Bad augment op {token.strip()!r} in {spec!r}; write name(a,b).")
        name = match.group(1)
        if name not in _OPS:
            valid = ", ".join(_signature(n) for n in _OPS)
            raise ValueError(f"Unknown augment op {name!r} in {spec!r}; choose from: {valid}.")
        if deterministic and not issubclass(_OPS[name], DeterministicOp):
            valid = [n for n, op in _OPS.items() if issubclass(op, DeterministicOp)]
            raise ValueError(
                f"{name!r} in {spec!r} is random; evaluation preprocessing takes only {valid}."
            )
        args = match.group(2) or ""
        number = int if _OPS[name] in _INT_OPS else float
        try:  # int(), float() and the op's own checks raise ValueError; arg count TypeError.
            values = [number(a) for a in filter(str.strip, args.split(","))]
            ops.append(_OPS[name](*values))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"Bad augment op {token.strip()!r} in {spec!r}: {str(error).rstrip('.')}. "
                f"Write it as {_signature(name)} with numbers."
            ) from error
    return ops


def apply_ops(ops, image: np.ndarray) -> np.ndarray:
    """Deterministic ops applied in order to one uint8 image."""
    for op in ops:
        image = op.apply(image)
    return image


def output_size(ops, image_size: int) -> tuple[int, int]:
    """(H, W) of an image_size x image_size image after `ops` (drawn with a fixed rng)."""
    record = {"image": np.zeros((image_size, image_size, 3), np.uint8)}
    rng = np.random.default_rng(0)
    for op in ops:
        record = op.random_map(record, rng)
    return record["image"].shape[:2]
