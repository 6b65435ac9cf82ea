"""Decoded images as the model should see them: upright, 8-bit RGB, whatever the file stored."""

import numpy as np
from PIL import Image, ImageOps

SIXTEEN_BIT_MAX = 65535


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
