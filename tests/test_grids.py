"""Image grids: layout and the [-1, 1] -> uint8 mapping."""

import numpy as np
import pytest
from PIL import Image

from ham_synth import grids


def test_grid_puts_class_c_on_row_c_with_values_mapped_to_uint8():
    labels = grids.class_grid_labels(num_classes=3, per_class=2)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    # Image i is constant, at a value that encodes its label.
    values = np.array([-1.0, 1.0, 0.0])[labels]
    images = np.broadcast_to(values[:, None, None, None], (6, 4, 4, 3))
    grid = grids.make_grid(images, rows=3, pad=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 3) and grid.dtype == np.uint8
    for row, expected in enumerate([0, 255, 128]):
        for col in range(2):
            y, x = 1 + row * 5, 1 + col * 5
            assert (grid[y : y + 4, x : x + 4] == expected).all()
    assert (grid[0] == 255).all()  # Padding is white.


def test_grid_refuses_a_ragged_last_row():
    with pytest.raises(ValueError, match="do not fill"):
        grids.make_grid(np.zeros((5, 2, 2, 3)), rows=2)


def test_png_is_upscaled_for_display(tmp_path):
    grid = np.zeros((10, 20, 3), np.uint8)
    grids.write_png(tmp_path / "g.png", grid, scale=grids.display_scale(16))
    assert Image.open(tmp_path / "g.png").size == (80, 40)


def test_row_labels_add_a_left_margin_and_keep_the_grid(tmp_path):
    grid = np.full((3 * 5 + 1, 2 * 5 + 1, 3), 200, np.uint8)
    grids.write_png(tmp_path / "g.png", grid, scale=4, row_labels=["akiec", "bcc", "vasc"])
    image = np.asarray(Image.open(tmp_path / "g.png"))
    margin = image.shape[1] - grid.shape[1] * 4
    assert image.shape[0] == grid.shape[0] * 4 and margin > 0
    np.testing.assert_array_equal(image[:, margin:], np.kron(grid, np.ones((4, 4, 1), np.uint8)))
    # Dark text in each row's band of the margin, white between them.
    band = image.shape[0] // 3
    for row in range(3):
        assert image[row * band : (row + 1) * band, :margin].min() < 100
