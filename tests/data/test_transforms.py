"""Augmentation and preprocessing ops: the parser, shapes and ranges, flips, rotation geometry,
zoom bounds, crops and resizing."""

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ham_synth.data import transforms

ALL_OPS = "flip_lr|flip_ud|rotate(30)|zoom(0.8,1.25)|color_jitter(0.3,0.3,0.3)"


def _record(image):
    return {"image": image, "label": np.int32(2), "index": 5}


def _noise(h=24, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _square(size=64, side=16):
    """A white `side`-pixel square centred on black."""
    image = np.zeros((size, size, 3), np.uint8)
    lo = (size - side) // 2
    image[lo : lo + side, lo : lo + side] = 255
    return image


def test_parse_ops_builds_the_ops_in_order_with_their_numbers():
    ops = transforms.parse_ops(" flip_lr | rotate(15) |zoom(0.9, 1.1)")
    assert ops == [transforms.FlipLR(), transforms.Rotate(15.0), transforms.Zoom(0.9, 1.1)]
    assert transforms.parse_ops("") == []


def test_parse_ops_names_an_unknown_op_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown augment op 'blur'.*flip_lr.*zoom\(min_scale"):
        transforms.parse_ops("flip_lr|blur(3)")


@pytest.mark.parametrize("spec", ["zoom(1)", "rotate(x)", "rotate(200)", "zoom(1.2,0.9)", "rot(("])
def test_parse_ops_rejects_bad_arguments_naming_the_op(spec):
    with pytest.raises(ValueError, match="augment op"):
        transforms.parse_ops(spec)


@pytest.mark.parametrize("op", transforms.parse_ops(ALL_OPS), ids=str)
def test_ops_keep_shape_dtype_and_other_fields_and_do_not_mutate_the_input(op):
    image = _noise()
    before = image.copy()
    for seed in range(5):
        out = op.random_map(_record(image), np.random.default_rng(seed))
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
        assert out["label"] == 2 and out["index"] == 5
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("op", transforms.parse_ops(ALL_OPS), ids=str)
def test_ops_are_a_function_of_the_rng(op):
    record = _record(_noise())
    first = op.random_map(record, np.random.default_rng(7))["image"]
    again = op.random_map(record, np.random.default_rng(7))["image"]
    np.testing.assert_array_equal(first, again)
    outputs = {op.random_map(record, np.random.default_rng(s))["image"].tobytes() for s in range(8)}
    assert len(outputs) > 1


@pytest.mark.parametrize(
    ("op", "mirror"),
    [(transforms.FlipLR(), lambda x: x[:, ::-1]), (transforms.FlipUD(), lambda x: x[::-1])],
)
def test_flips_mirror_about_half_the_time_and_keep_pixel_values(op, mirror):
    image = _noise()
    flipped = 0
    for seed in range(200):
        out = op.random_map(_record(image), np.random.default_rng(seed))["image"]
        if np.array_equal(out, mirror(image)):
            flipped += 1
        else:
            np.testing.assert_array_equal(out, image)
    assert 70 < flipped < 130


def test_rotate_image_by_0_is_identity_and_by_90_is_rot90_counter_clockwise():
    image = _noise(32, 32)
    np.testing.assert_array_equal(transforms.rotate_image(image, 0.0), image)
    quarter = transforms.rotate_image(image, 90.0).astype(int)
    assert np.abs(quarter - np.rot90(image)).max() <= 1  # Bilinear rounding only.


def test_rotate_and_zoom_out_fill_corners_by_reflection_not_black():
    flat = np.full((32, 32, 3), 200, np.uint8)
    np.testing.assert_array_equal(transforms.rotate_image(flat, 45.0), flat)
    np.testing.assert_array_equal(transforms.zoom_image(flat, 0.5), flat)


def test_rotate_keeps_a_centred_square_size_and_its_range():
    out = transforms.rotate_image(_square(), 30.0)
    assert out.min() == 0 and out.max() == 255
    # Area is rotation invariant (up to edge blur).
    assert abs((out[..., 0] > 127).sum() - 16 * 16) <= 16


def _apparent_side(image):
    return np.sqrt((image[..., 0] > 127).sum())


def test_zoom_image_scales_a_centred_square():
    # Below 0.8 the reflected margin would mirror the square itself back into view.
    for scale in (0.8, 1.0, 1.25, 1.6, 2.0):
        side = _apparent_side(transforms.zoom_image(_square(), scale))
        assert abs(side - 16 * scale) <= 1.0, scale


def test_zoom_op_scales_within_its_bounds_and_spans_them():
    op = transforms.Zoom(0.8, 1.25)
    ratios = [
        _apparent_side(op.random_map(_record(_square()), np.random.default_rng(s))["image"]) / 16
        for s in range(40)
    ]
    tolerance = 1.0 / 16  # One pixel of the 16-pixel side.
    assert min(ratios) >= 0.8 - tolerance and max(ratios) <= 1.25 + tolerance
    assert min(ratios) < 0.9 and max(ratios) > 1.1


def test_random_resized_crop_boxes_keep_their_area_share_and_aspect_and_spread(monkeypatch):
    """Each box: inside the image, area share in [min_area, max_area] (down to sqrt(3/4) of
    min_area where a side is capped to fit), aspect in [3/4, 4/3]; over draws they span the
    range and move about; the output keeps the image's shape and dtype."""
    boxes = []
    resample = transforms.resample_box
    monkeypatch.setattr(
        transforms,
        "resample_box",
        lambda image, box, size: boxes.append(box) or resample(image, box, size),
    )
    op = transforms.RandomResizedCrop(0.3, 0.9)
    image = _noise()
    h, w = image.shape[:2]
    for seed in range(300):
        out = op.random_map(_record(image), np.random.default_rng(seed))["image"]
        assert out.shape == image.shape and out.dtype == image.dtype
    left, top, right, bottom = np.asarray(boxes).T
    assert (left >= 0).all() and (top >= 0).all() and (right <= w).all() and (bottom <= h).all()
    share = (right - left) * (bottom - top) / (h * w)
    assert share.max() <= 0.9 + 1e-9 and share.min() >= 0.3 * np.sqrt(3 / 4) - 1e-9
    assert share.min() < 0.35 and share.max() > 0.85
    aspect = (right - left) / (bottom - top)
    assert aspect.min() >= 3 / 4 - 1e-9 and aspect.max() <= 4 / 3 + 1e-9
    assert left.std() > 0.5 and top.std() > 0.5


def test_color_jitter_with_unit_factors_is_identity_and_stays_in_uint8():
    image = _noise()
    np.testing.assert_array_equal(transforms.jitter_colors(image, 1.0, 1.0, 1.0), image)
    bright = transforms.jitter_colors(image, 2.0, 2.0, 2.0)
    assert bright.dtype == np.uint8 and bright.max() == 255
    gray = transforms.jitter_colors(image, 1.0, 1.0, 0.0)
    assert np.abs(gray.astype(int) - gray[..., :1]).max() <= 1


@pytest.mark.parametrize("factor", [0.6, 1.4])
@pytest.mark.parametrize(("which", "enhance"), [(0, "Brightness"), (1, "Contrast"), (2, "Color")])
def test_color_jitter_matches_pils_enhancers_one_factor_at_a_time(which, enhance, factor):
    """Brightness, contrast (about the mean gray) and saturation (about each pixel's gray) as
    PIL's ImageEnhance (torchvision's ColorJitter) computes them, to the rounding of uint8."""
    image = _noise()
    factors = [1.0, 1.0, 1.0]
    factors[which] = factor
    ours = transforms.jitter_colors(image, *factors).astype(int)
    pil = getattr(ImageEnhance, enhance)(Image.fromarray(image)).enhance(factor)
    assert np.abs(ours - np.asarray(pil).astype(int)).max() <= 1


def test_center_crop_takes_torchvisions_central_window():
    image = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    # torchvision: top = round((5 - 2) / 2) = 2 (half to even), left = round((6 - 2) / 2) = 2.
    (op,) = transforms.parse_ops("center_crop(2)", deterministic=True)
    np.testing.assert_array_equal(op.apply(image), image[2:4, 2:4])
    with pytest.raises(ValueError, match=r"center_crop\(8\) on a 5x6 image: the crop must fit"):
        transforms.CenterCrop(8).apply(image)


def test_random_crop_draws_every_window_position_and_copies_it_exactly():
    image = _noise(6, 7)
    seen = set()
    for seed in range(400):
        out = transforms.RandomCrop(4).random_map(_record(image), np.random.default_rng(seed))
        windows = [
            (t, l)
            for t in range(3)
            for l in range(4)  # noqa: E741
            if np.array_equal(out["image"], image[t : t + 4, l : l + 4])
        ]
        assert len(windows) == 1
        seen.add(windows[0])
    assert len(seen) == 3 * 4


def test_resize_keeps_a_constant_image_and_only_the_size_changes():
    flat = np.full((32, 32, 3), 77, np.uint8)
    (op,) = transforms.parse_ops("resize(12)", deterministic=True)
    np.testing.assert_array_equal(op.apply(flat), np.full((12, 12, 3), 77, np.uint8))
    image = _noise(12, 12)
    assert op.apply(image) is image  # Already that size: untouched.


def test_evaluation_preprocessing_refuses_random_ops_and_sizes_are_integers():
    with pytest.raises(ValueError, match=r"'random_crop'.*is random.*\['center_crop', 'resize'\]"):
        transforms.parse_ops("random_crop(8)", deterministic=True)
    with pytest.raises(ValueError, match=r"center_crop\(size\) with numbers"):
        transforms.parse_ops("center_crop(7.5)")
    ops = transforms.parse_ops("resize(20)|center_crop(16)", deterministic=True)
    assert transforms.output_size(ops, 64) == (16, 16)
    assert transforms.output_size(transforms.parse_ops("random_crop(12)|flip_lr"), 16) == (12, 12)
