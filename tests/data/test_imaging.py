"""Images decode as they are meant to be seen: 16-bit greyscale scaled, not clipped; EXIF
orientation applied; alpha dropped with the colour kept; through the folder source too."""

import numpy as np
import pytest
from PIL import Image

from ham_synth.data import image_folder, imaging

ORIENTATION = 0x0112  # EXIF tag: 6 means "rotate 90° clockwise to display".


def _marked(height=12, width=20) -> np.ndarray:
    """A dark image with a bright top-left block, so any rotation or flip shows."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[:4, :6] = (250, 30, 30)
    return image


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as image:
        assert image.mode.startswith("I;16")
        rgb = np.asarray(imaging.to_rgb(image))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) == 256


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    stored = _marked()
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    path = tmp_path / f"sideways{suffix}"
    Image.fromarray(stored).save(path, exif=exif, quality=100, subsampling=0)
    with Image.open(path) as image:
        upright = np.asarray(imaging.to_rgb(image), np.int16)
    expected = np.rot90(stored, k=-1).astype(np.int16)  # 90° clockwise.
    assert upright.shape == expected.shape == (20, 12, 3)
    assert np.abs(upright - expected).max() <= 16  # JPEG's loss at the block's edges.


def test_alpha_is_dropped_and_the_colour_kept(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (10, 120, 230)
    rgba[..., 3] = np.arange(8)[:, None] * 30
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as image:
        rgb = np.asarray(imaging.to_rgb(image))
    assert (rgb == (10, 120, 230)).all()


def test_the_folder_source_decodes_through_it(tmp_path):
    (tmp_path / "a").mkdir()
    values = np.full((16, 16), 32896, np.uint16)  # 128 * 257: mid-grey at 16 bits.
    Image.fromarray(values).save(tmp_path / "a" / "grey16.png")
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(_marked(16, 16)).save(tmp_path / "a" / "turned.png", exif=exif)
    source = image_folder.FolderSource(
        (tmp_path / "a" / "grey16.png", tmp_path / "a" / "turned.png"),
        np.zeros(2, np.int32),
        ("a",),
        16,
    )
    assert (source[0]["image"] == 128).all()
    np.testing.assert_array_equal(source[1]["image"], np.rot90(_marked(16, 16), k=-1))
