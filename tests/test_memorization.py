"""The memorization audit: copies of training images are flagged (ratio about 0), held-out real
images are not (ratio about 1), and a blurred class-mean image is not called a copy."""

import numpy as np
import pytest
from conftest import load_config
from PIL import Image, ImageFilter

from ham_synth import memorization, parallel
from ham_synth.data import sources
from ham_synth.evaluators import features


@pytest.fixture(scope="module")
def digits():
    data = load_config("vae.py:quickstart").data  # Digits at 16², 10 classes.
    return data, {s: memorization.read_all(sources.get_source(memorization.split_data(data, s)))
                  for s in ("train", "val")}  # fmt: skip


def write_set(folder, images, labels):
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(label) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    return str(folder)


def audit(data, folder):
    mesh = parallel.make_mesh()
    net = features.make_pixels(mesh, pixel_grid=4)
    return memorization.audit(data, folder, net, mesh=mesh)[0]


def test_copies_are_flagged_and_new_real_images_are_not(digits, tmp_path):
    data, sets = digits
    train_images, train_labels = sets["train"]
    copies = audit(data, write_set(tmp_path / "copies", train_images[:40], train_labels[:40]))
    assert copies["near_copies"] == 40
    assert copies["pixels"]["ratio"] < 1e-3 and copies["features"]["ratio"] < 1e-3
    nearest = [image["pixels_nearest_train"] for image in copies["images"]]
    assert sorted(nearest) == list(range(40)), "each copy finds its own original"
    # Per class, against the training images of the same class: the same verdict.
    per_class = copies["per_class"]
    assert set(per_class) == {str(c) for c in np.unique(train_labels[:40])}
    for name, entry in per_class.items():
        assert entry["images"] == int(np.sum(train_labels[:40] == int(name)))
        assert entry["near_copies"] == entry["images"], name
        assert entry["pixels"]["ratio"] < 1e-3 and entry["features"]["ratio"] < 1e-3, name

    held_out = audit(data, write_set(tmp_path / "held_out", *sets["val"]))
    assert held_out["near_copies"] <= 0.02 * held_out["images_audited"]
    assert 0.8 < held_out["pixels"]["ratio"] < 1.25
    assert 0.8 < held_out["features"]["ratio"] < 1.25
    for name, entry in held_out["per_class"].items():  # 10-20 val images a class: noisier.
        assert 0.6 < entry["pixels"]["ratio"] < 1.6, name


def test_a_blurred_class_mean_is_not_a_copy(digits, tmp_path):
    data, sets = digits
    images, labels = sets["train"]
    means = [
        np.asarray(Image.fromarray(images[labels == c].mean(0).astype(np.uint8))
                   .filter(ImageFilter.GaussianBlur(1)))
        for c in range(10)
    ]  # fmt: skip
    result = audit(data, write_set(tmp_path / "means", np.stack(means), np.arange(10)))
    assert result["near_copies"] == 0


def test_the_sampling_screen_flags_copies_only(digits):
    data, sets = digits
    screen = memorization.near_copy_screen(data)
    assert screen(sets["train"][0][:10]).all()
    assert screen(sets["val"][0]).mean() <= 0.02
