"""Image grids: images in [-1, 1] -> one uint8 picture, one row per class, written as PNG (sample
grids, dataset examples)."""

import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ham_synth import fileio

# PNG grids are upscaled (nearest) until each image is at least this many pixels wide.
MIN_DISPLAY_PIXELS = 64
LABEL_FONT_SIZE = 14  # Pixels; row labels in a left margin, LABEL_PADDING from its edges.
LABEL_PADDING = 4


def to_uint8(images) -> np.ndarray:
    """float images in [-1, 1] -> uint8 in [0, 255], rounded as the PNG files store them."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
        np.uint8
    )


def class_grid_labels(num_classes: int, per_class: int) -> np.ndarray:
    """int32[num_classes * per_class]: row-major labels, so row c of the grid is class c."""
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)


def make_grid(images: np.ndarray, rows: int, pad: int = 1) -> np.ndarray:
    """float [N, H, W, C] in [-1, 1] -> uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
    n, h, w, c = images.shape
    if n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows.")
    cols = n // rows
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(to_uint8(images)):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = image
    return grid


def display_scale(image_size: int) -> int:
    return max(1, MIN_DISPLAY_PIXELS // image_size)


def label_rows(image: Image.Image, labels: Sequence[str]) -> Image.Image:
    """`image` with a white margin on its left that names each of its len(labels) equal rows."""
    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    margin = int(max(font.getlength(label) for label in labels)) + 2 * LABEL_PADDING
    labelled = Image.new(image.mode, (margin + image.width, image.height), "white")
    labelled.paste(image, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    row_height = image.height / len(labels)
    for row, label in enumerate(labels):
        y = (row + 0.5) * row_height
        draw.text((LABEL_PADDING, y), label, fill="black", font=font, anchor="lm")
    return labelled


def write_png(
    path: pathlib.Path, grid: np.ndarray, scale: int = 1, row_labels: Sequence[str] = ()
) -> None:
    """Writes a uint8 [H, W, C] picture, upscaled `scale`x (nearest) to stay legible, with each
    row named by `row_labels` (e.g. the class names) when given."""
    image = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    if row_labels:
        image = label_rows(image, row_labels)
    with fileio.atomic_write(path, "wb") as f:
        image.save(f, format="PNG")
