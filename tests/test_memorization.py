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
    assert screen(sets["train"][0][:10], sets["train"][1][:10]).all()
    assert screen(*sets["val"]).mean() <= 0.02


def test_each_image_is_measured_against_its_own_class_not_the_test_mix():
    # A dense majority class and a spread-out minority one, in 8 dimensions; the test split has
    # the training mix, the synthetic set the minority class alone (as a study's sets do).
    rng = np.random.default_rng(0)

    def draw(n, centre, spread):
        return centre + rng.normal(0, spread, (n, 8))

    train = np.concatenate([draw(1000, 0, 1.0), draw(300, 10, 3.0)])
    test = np.concatenate([draw(200, 0, 1.0), draw(60, 10, 3.0)])
    test_labels, minority = np.repeat([0, 1], [200, 60]), np.ones(60, int)
    new = draw(60, 10, 3.0)  # New images of the minority class.
    copies = train[1000:1060] + rng.normal(0, 0.25, (60, 8))  # Its training images, lightly noised.

    def audit(synthetic, labels=None):
        space = memorization.audit_space(synthetic, test, train, 0.05, labels)
        return space["ratio"], int(memorization.near_copies({"x": space}).sum())

    # Against the whole test split, the majority's density sets the scale: new minority images
    # read 3x farther than new real images, and the threshold lets some copies through.
    (ratio, _), (_, flagged) = audit(new), audit(copies)
    assert ratio > 2.5 and flagged < 55
    # Against their own class: new images about 1, every copy flagged.
    (ratio, flagged_new), (copy_ratio, flagged) = (
        audit(new, (minority, test_labels)),
        audit(copies, (minority, test_labels)),
    )
    assert 0.8 < ratio < 1.25 and flagged_new <= 9  # About the 5% quantile's 3 of 60.
    assert copy_ratio < 0.2 and flagged == 60
