"""FID, KID and precision/recall against pytorch-fid, closed forms and direct formulas."""

import warnings

import numpy as np
import pytest

from ham_synth.evaluators import fid


def random_statistics(rng, d: int, n: int):
    """(mu, sigma) of n Gaussian samples in d dims with a random covariance (rank min(n-1, d))."""
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    features = rng.normal(size=(n, d)) @ mix + rng.normal(size=d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fid.compute_statistics(features)


def test_statistics_are_the_float64_mean_and_ddof1_covariance():
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    with pytest.warns(UserWarning, match="KID"):
        mu, sigma = fid.compute_statistics(features)
    x = features.astype(np.float64)
    centered = x - x.sum(0) / len(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, centered.T @ centered / (len(x) - 1), rtol=1e-12)


def test_no_small_sample_warning_from_2048_samples():
    features = np.random.default_rng(0).normal(size=(fid.MIN_SAMPLES_FOR_FID, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid.compute_statistics(features)


@pytest.mark.parametrize(("d", "n"), [(8, 200), (64, 30)])  # full-rank and rank-deficient
def test_frechet_distance_equals_pytorch_fid(d, n):
    tr = pytest.importorskip("torch_reference")
    rng = np.random.default_rng(d)
    stats1, stats2 = random_statistics(rng, d, n), random_statistics(rng, d, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's disp=False deprecation inside pytorch-fid
        expected = tr.calculate_frechet_distance(*stats1, *stats2)
    assert fid.frechet_distance(*stats1, *stats2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_frechet_distance_of_identical_statistics_is_zero():
    mu, sigma = random_statistics(np.random.default_rng(0), 16, 100)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_unit_mean_shift_is_the_dimension():
    d = 10
    eye = np.eye(d)
    assert fid.frechet_distance(np.zeros(d), eye, np.ones(d), eye) == pytest.approx(d, rel=1e-12)


def test_frechet_distance_of_scaled_gaussians_has_the_closed_form():
    """N(0, a^2 I) vs N(0, b^2 I) in d dims: d (a - b)^2."""
    d, a, b = 5, 2.0, 0.5
    value = fid.frechet_distance(np.zeros(d), a * a * np.eye(d), np.zeros(d), b * b * np.eye(d))
    assert value == pytest.approx(d * (a - b) ** 2, rel=1e-12)


def test_a_product_without_square_root_is_offset_as_pytorch_fid_does():
    tr = pytest.importorskip("torch_reference")
    nilpotent = np.array([[0.0, 1.0], [0.0, 0.0]])  # scipy's sqrtm of it is inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = tr.calculate_frechet_distance(np.zeros(2), nilpotent, np.ones(2), np.eye(2))
    with pytest.warns(UserWarning, match="singular"):
        value = fid.frechet_distance(np.zeros(2), nilpotent, np.ones(2), np.eye(2))
    assert np.isfinite(value) and value == pytest.approx(expected, rel=1e-9)


def test_statistics_files_interchange_with_pytorch_fid(tmp_path):
    tr = pytest.importorskip("torch_reference")
    mu, sigma = random_statistics(np.random.default_rng(1), 6, 40)
    ours = tmp_path / "ours.npz"
    fid.save_statistics(ours, mu, sigma)
    their_mu, their_sigma = tr.fid_score.compute_statistics_of_path(str(ours), None, 50, 6, "cpu")
    np.testing.assert_array_equal(their_mu, mu)
    np.testing.assert_array_equal(their_sigma, sigma)
    # pytorch-fid's save_fid_stats writes np.savez_compressed(path, mu=..., sigma=...).
    theirs = tmp_path / "theirs.npz"
    np.savez_compressed(theirs, mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    loaded_mu, loaded_sigma = fid.load_statistics(theirs)
    assert loaded_mu.dtype == np.float64
    np.testing.assert_array_equal(loaded_sigma, sigma.astype(np.float32))


def test_statistics_file_without_sigma_is_rejected(tmp_path):
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match="sigma"):
        fid.load_statistics(tmp_path / "bad.npz")


def test_kid_with_whole_sets_equals_the_unbiased_mmd_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(7, 3)) + 0.3
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = len(x)
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    across = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    expected = within / (m * (m - 1)) - 2 * across / m**2
    mean, std = fid.kernel_inception_distance(x, y, num_subsets=5, subset_size=100)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)  # every subset is the whole set


def test_kid_is_near_zero_for_one_distribution_and_not_for_two():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = fid.kernel_inception_distance(a, b, num_subsets=20, subset_size=300)
    shifted, _ = fid.kernel_inception_distance(a, b + 0.5, num_subsets=20, subset_size=300)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 100 * abs(same)


def test_precision_and_recall_of_a_set_against_itself_are_one():
    features = np.random.default_rng(0).normal(size=(200, 8))
    assert fid.precision_recall(features, features, k=3) == (1.0, 1.0)


def test_precision_and_recall_on_a_line():
    """Real 0..9 and fake 8..17: the 3rd-neighbour radius is 3 at each set's ends, 2 inside,
    so real 9 reaches fake 12 and fake 8 reaches real 5."""
    real = np.arange(10.0)[:, None]
    fake = np.arange(8.0, 18.0)[:, None]
    precision, recall = fid.precision_recall(real, fake, k=3)
    assert precision == pytest.approx(5 / 10)  # fake 8, 9, 10, 11, 12
    assert recall == pytest.approx(5 / 10)  # real 5, 6, 7, 8, 9


def test_knn_radii_exclude_the_point_itself():
    radii = fid.knn_radii(np.array([[0.0], [1.0], [3.0], [7.0]]), k=1, chunk=3)
    np.testing.assert_allclose(radii, [1.0, 1.0, 4.0, 16.0])


def test_per_class_metrics_cover_classes_with_enough_samples():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    real_labels = np.repeat([0, 1, 2], [30, 28, 2])
    fake_labels = np.repeat([0, 1, 2], [20, 20, 20])
    with pytest.warns(UserWarning, match="Per-class FID"):
        results = fid.per_class_metrics(real, real_labels, fake, fake_labels, ("a", "b", "c"))
    assert sorted(results) == ["a", "b"]  # "c" has 2 real samples <= k
    assert results["a"]["n_real"] == 30 and results["b"]["n_fake"] == 20
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = fid.compute_metrics(real[real_labels == 0], fake[fake_labels == 0])
    assert results["a"] == direct


def test_class_matched_subsets_take_the_real_class_mix_from_both_sides():
    real = np.repeat([0, 1, 2], [60, 30, 10])  # Shares 0.6, 0.3, 0.1.
    fake = np.repeat([0, 1, 2], [12, 300, 300])  # Minority-heavy: class 0 limits the subset.
    real_idx, fake_idx = fid.class_matched(real, fake, seed=3)
    # 12 / 0.6 = 20 images a side: 12, 6 and 2 of the three classes.
    for labels, idx in ((real, real_idx), (fake, fake_idx)):
        assert len(set(idx.tolist())) == len(idx)
        np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [12, 6, 2])
    assert fid.class_matched(real, np.repeat([0, 1], [50, 50])) is None  # No class 2.
    same = fid.class_matched(real, real)  # Matched already: everything.
    np.testing.assert_array_equal(same[0], np.arange(100))


def test_class_matched_keeps_every_image_of_an_equal_mix_and_never_drops_a_class():
    # HAM10000's test mix: in floats, c / (c / n) comes out under c and floors to c - 1.
    counts = [65, 103, 220, 23, 223, 1341, 28]
    labels = np.repeat(np.arange(7), counts)
    real_idx, fake_idx = fid.class_matched(labels, labels)
    np.testing.assert_array_equal(np.bincount(labels[fake_idx], minlength=7), counts)
    # 50 nv images allow 74 a side, where df's share (1.1%) rounds to none: no subset holds
    # every class, so none is returned rather than one without df.
    fake = np.repeat(np.arange(7), [150, 150, 150, 150, 150, 50, 150])
    assert fid.class_matched(labels, fake) is None
    real_idx, fake_idx = fid.class_matched(labels, np.repeat(np.arange(7), [150] * 7))
    np.testing.assert_array_equal(np.bincount(labels[real_idx], minlength=7),
                                  [7, 11, 24, 2, 24, 149, 3])  # fmt: skip
