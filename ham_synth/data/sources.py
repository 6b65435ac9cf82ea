"""Random-access data sources: records `{"image": uint8[H, W, 3], "label": int32, "index": int}`.

A source has `len`, `__getitem__` and `class_names`, so grain can shard and shuffle it by index.
`get_source(config.data)` picks one by `data.name`.
"""

import dataclasses

import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets

from ham_synth.data import ham10000

SPLITS = ("train", "val", "test", "all")


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Images and labels held in memory; `index` is the record's position in the split."""

    images: np.ndarray  # uint8[N, H, W, 3]
    labels: np.ndarray  # int32[N]
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": self.labels[index], "index": index}


def stratified_split(
    labels: np.ndarray, split: str, *, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Sorted indices of `split`; per class, a seeded shuffle gives val and test their fractions
    (at least one each when the class has three or more members) and train the rest."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n = len(members)
        minimum = 1 if n >= 3 else 0
        n_val = max(minimum, round(n * val_fraction))
        n_test = max(minimum, round(n * test_fraction))
        bounds = {"val": (0, n_val), "test": (n_val, n_val + n_test), "train": (n_val + n_test, n)}
        start, stop = bounds[split]
        chosen.append(members[start:stop])
    return np.sort(np.concatenate(chosen))


def imbalance_counts(class_sizes: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Largest per-class counts <= `class_sizes` whose proportions are `shares` (rounded)."""
    total = np.min(class_sizes / shares)
    return np.minimum(np.round(total * shares).astype(int), class_sizes)


def load_digits(image_size: int, imbalance: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upscaled (bicubic) to RGB uint8 at `image_size`.

    With `imbalance`, digits 0..6 stand for HAM10000's classes in label order and are
    subsampled (seeded) to HAM10000's class shares, so digit 5 plays nv and 3 plays df.
    """
    digits = sk_datasets.load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int32)
    if imbalance:
        num_classes = len(ham10000.CLASS_NAMES)
        sizes = np.bincount(labels, minlength=10)[:num_classes]
        counts = imbalance_counts(sizes, np.asarray(ham10000.CLASS_SHARES))
        rng = np.random.default_rng(seed)
        keep = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), n, replace=False)
                for c, n in enumerate(counts)
            ]
        )
        keep.sort()
        gray, labels = gray[keep], labels[keep]
    resized = np.stack(
        [
            np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BICUBIC))
            for g in gray
        ]
    )
    return np.repeat(resized[..., None], 3, axis=-1), labels


def make_digits(data: ml_collections.ConfigDict) -> ArraySource:
    """The embedded default dataset (ships with scikit-learn), split as `data.split`."""
    images, labels = load_digits(data.image_size, data.imbalance, data.split_seed)
    keep = stratified_split(
        labels,
        data.split,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
    )
    class_names = (
        tuple(f"{d}:{name}" for d, name in enumerate(ham10000.CLASS_NAMES))
        if data.imbalance
        else tuple(str(d) for d in range(10))
    )
    return ArraySource(images[keep], labels[keep], class_names)


_SOURCES = {"digits": make_digits}


def get_source(data: ml_collections.ConfigDict) -> ArraySource:
    """The source named by `data.name`, checked against `data.num_classes`."""
    if data.name not in _SOURCES:
        raise ValueError(f"Unknown data.name {data.name!r}; choose one of {sorted(_SOURCES)}.")
    source = _SOURCES[data.name](data)
    if len(source.class_names) != data.num_classes:
        raise ValueError(
            f"data.num_classes={data.num_classes} but {data.name!r} has "
            f"{len(source.class_names)} classes {source.class_names}; "
            f"set --config.data.num_classes={len(source.class_names)}."
        )
    return source
