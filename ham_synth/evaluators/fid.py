"""Realism metrics on Inception pool features: FID (as pytorch-fid computes it), KID, improved
precision/recall, their per-class versions, and FID statistics files (pytorch-fid's .npz).

Everything here is float64 numpy on features already extracted (`inception.extract_features`).
"""

import os
import warnings

import numpy as np
from scipy import linalg

from ham_synth import fileio

# Below this many samples the 2048-d covariance is rank-deficient and FID strongly biased.
MIN_SAMPLES_FOR_FID = 2048


# --- Fréchet Inception Distance ---


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float[N, D] features -> (mu float64[D], sigma float64[D, D]), sigma with ddof=1.

    Warns below 2048 samples, where FID is biased upward; KID is unbiased there.
    """
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"Need features [N >= 2, D], got shape {features.shape}.")
    if len(features) < MIN_SAMPLES_FOR_FID:
        warnings.warn(
            f"FID from {len(features)} < {MIN_SAMPLES_FOR_FID} samples is biased upward and not "
            "comparable with published numbers; report KID (kernel_inception_distance) too.",
            stacklevel=2,
        )
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), as pytorch-fid computes it.

    A near-singular product (non-finite sqrtm) is retried with eps*I added to both covariances;
    an imaginary part from round-off is dropped unless the diagonal's exceeds 1e-3.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"Statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}."
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # handled just below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(
            f"FID: singular covariance product; adding {eps} to their diagonals.", stacklevel=2
        )
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm.")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> None:
    """An .npz with `mu` and `sigma`, the layout of pytorch-fid's --save-stats files."""
    with fileio.atomic_write(path, "wb") as f:
        np.savez_compressed(f, mu=np.asarray(mu), sigma=np.asarray(sigma))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) as float64 from ours or pytorch-fid's --save-stats .npz (no pickle)."""
    with np.load(path, allow_pickle=False) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; it has {data.files}.")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)


# --- Kernel Inception Distance ---


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equal-size samples under the cubic polynomial kernel."""
    m = len(x)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of unbiased MMD^2 over random subsets (Bińkowski et al. 2018).

    Each subset draws min(subset_size, N1, N2) samples without replacement from each set.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}.")
    rng = np.random.default_rng(seed)
    mmds = [
        unbiased_mmd2(
            x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(mmds)), float(np.std(mmds))


# --- Improved precision and recall (Kynkäänniemi et al. 2019) ---


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """float64[len(x), len(y)] squared Euclidean distances, clipped at 0 against round-off."""
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Squared distance from each point to its k-th nearest neighbour (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"Need more than k={k} samples for k-NN radii, got {len(features)}.")
    radii = [
        np.partition(squared_distances(features[i : i + chunk], features), k, axis=1)[:, k]
        for i in range(0, len(features), chunk)
    ]
    return np.concatenate(radii)


def manifold_coverage(
    manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray, chunk: int = 1024
) -> float:
    """Fraction of `queries` inside at least one k-NN ball of the `manifold` points."""
    inside = [
        (squared_distances(queries[i : i + chunk], manifold) <= radii[None, :]).any(axis=1)
        for i in range(0, len(queries), chunk)
    ]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall): the share of fake samples on the real k-NN manifold, and of real
    samples on the fake one."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall


# --- All metrics, overall and per class ---


def compute_metrics(real: np.ndarray, fake: np.ndarray, *, k: int = 3, seed: int = 0) -> dict:
    """{"fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake"} for two feature sets.

    Pass `real` stats computed once (e.g. from a cache) through `frechet_distance` instead when
    only FID is wanted.
    """
    fid = frechet_distance(*compute_statistics(real), *compute_statistics(fake))
    kid, kid_std = kernel_inception_distance(real, fake, seed=seed)
    precision, recall = precision_recall(real, fake, k=k)
    return {
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "n_real": len(real),
        "n_fake": len(fake),
    }


def class_matched(real_labels: np.ndarray, fake_labels: np.ndarray, seed: int = 0):
    """(real indices, fake indices): the largest subsets of both sides with the real side's class
    mix (each class's count rounded down), drawn without replacement; None when no such subset
    holds every class of the real side: the fake side lacks one, or has so few of one that
    another rounds to none. An overall distance on them reads realism, not class mix."""
    classes, real_counts = np.unique(real_labels, return_counts=True)
    fake_counts = np.asarray([np.sum(fake_labels == c) for c in classes])
    # In integers: float shares would round c / (c / n) under c and drop an image a class.
    n = int(real_counts.sum())
    total = min(n, *(int(f) * n // int(r) for f, r in zip(fake_counts, real_counts, strict=True)))
    take = total * real_counts // n
    if not take.all():
        return None
    rng = np.random.default_rng(seed)

    def draw(labels):
        picked = [rng.choice(np.flatnonzero(labels == c), n, replace=False)
                  for c, n in zip(classes, take, strict=True)]  # fmt: skip
        return np.sort(np.concatenate(picked))

    return draw(real_labels), draw(fake_labels)


def per_class_metrics(
    real: np.ndarray,
    real_labels: np.ndarray,
    fake: np.ndarray,
    fake_labels: np.ndarray,
    class_names: tuple[str, ...],
    *,
    k: int = 3,
    seed: int = 0,
) -> dict[str, dict]:
    """class name -> compute_metrics on that class's real and fake features.

    Classes with too few samples on either side (<= k) are left out; per-class FID on a few
    hundred samples is biased, so one warning covers them all and KID is the number to compare.
    """
    results, small = {}, []
    for label, name in enumerate(class_names):
        r, f = real[real_labels == label], fake[fake_labels == label]
        if min(len(r), len(f)) <= k:
            continue
        if min(len(r), len(f)) < MIN_SAMPLES_FOR_FID:
            small.append(name)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="FID from", category=UserWarning)
            results[name] = compute_metrics(r, f, k=k, seed=seed)
    if small:
        warnings.warn(
            f"Per-class FID for {small} uses fewer than {MIN_SAMPLES_FOR_FID} samples and is "
            "biased upward; compare per-class KID instead.",
            stacklevel=2,
        )
    return results
