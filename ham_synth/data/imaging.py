"""Decoded images as the model should see them: upright, 8-bit RGB, whatever the file stored."""

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MAX = 65535
# What PIL raises for a file that is missing, truncated, not an image, or declares more pixels
# than PIL will decode (a decompression bomb).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB: its EXIF orientation applied (a phone photo stored sideways comes
    upright), 16-bit greyscale scaled to 8 bits (PIL's convert would clip it to white), alpha
    dropped (the colour channels kept as stored), palette and greyscale expanded."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        pixels = np.asarray(image, np.float64)
        # 32-bit integer or float images holding 16-bit values scale the same way.
        if image.mode.startswith("I;16") or pixels.max() > 255:
            pixels = pixels * 255 / SIXTEEN_BIT_MAX
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def center_crop_resize(image: Image.Image, size: int) -> Image.Image:
    """The central square (side = the shorter edge), downsampled to `size` x `size` with Lanczos.

    Why: HAM10000 images are 600x450 with the lesion centred, so the crop drops 75 px of
    surrounding skin on each side and keeps the lesion's shape (a squash to square would distort
    it). PIL's Lanczos widens its kernel by the scale factor, so the 450 -> 64 downsample is
    antialiased (no moire from hair and pigment network).
    """
    image = to_rgb(image)  # Upright first: EXIF orientation can swap width and height.
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.resize((size, size), Image.LANCZOS, box=(left, top, left + side, top + side))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3]: center crop to square, antialiased resize."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(center_crop_resize(Image.fromarray(image), size))
