"""Which records a split or subset of a source holds: stratified train/val/test splits, the
imbalanced digits' split, the sources whose split is fixed elsewhere, and the subsets of any source
that `data.classes` and `data.train_fraction` keep."""

import dataclasses

import ml_collections
import numpy as np

from ham_synth import config_lib
from ham_synth.data import ham10000

SPLITS = ("train", "val", "test", "all")


def stratified_split(
    labels: np.ndarray, split: str, *, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Sorted indices of `split`; per class, a seeded shuffle gives val and test their fractions
    (a non-zero fraction takes at least one when the class has three or more members) and train
    the rest."""
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
        n_val = max(minimum, round(n * val_fraction)) if val_fraction > 0 else 0
        n_test = max(minimum, round(n * test_fraction)) if test_fraction > 0 else 0
        bounds = {"val": (0, n_val), "test": (n_val, n_val + n_test), "train": (n_val + n_test, n)}
        start, stop = bounds[split]
        chosen.append(members[start:stop])
    return np.sort(np.concatenate(chosen))


def split_fraction(value: float) -> float:
    """A data.val_fraction / test_fraction, with config_lib.SOURCE_SPLIT read as the default."""
    return config_lib.DEFAULT_FRACTION if value == config_lib.SOURCE_SPLIT else value


def split_from_config(labels: np.ndarray, data: ml_collections.ConfigDict) -> np.ndarray:
    """`stratified_split` with `data.split` and its fractions and seed."""
    return stratified_split(
        labels,
        data.split,
        val_fraction=split_fraction(data.val_fraction),
        test_fraction=split_fraction(data.test_fraction),
        seed=data.split_seed,
    )


def imbalance_counts(class_sizes: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Largest per-class counts <= `class_sizes` whose proportions are `shares` (rounded)."""
    total = np.min(class_sizes / shares)
    return np.minimum(np.round(total * shares).astype(int), class_sizes)


# Imbalanced digits: val and test are drawn before train is subsampled, at least this many images
# of each class each, so every class can be scored (a curated test set, as a clinic's would be).
MIN_EVAL_PER_CLASS = 15


def imbalanced_split(
    labels: np.ndarray, split: str, *, val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Sorted indices of `split` for imbalanced digits: per class, a seeded shuffle gives val and
    test their fractions of the balanced digits (at least MIN_EVAL_PER_CLASS each), and only the
    rest, train, is subsampled to HAM10000's class shares."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
    rng = np.random.default_rng(seed)
    parts = {"train": [], "val": [], "test": []}
    pools = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val, n_test = (
            max(MIN_EVAL_PER_CLASS, round(len(members) * f)) if f > 0 else 0
            for f in (val_fraction, test_fraction)
        )
        parts["val"].append(members[:n_val])
        parts["test"].append(members[n_val : n_val + n_test])
        pools.append(members[n_val + n_test :])
    shares = np.asarray(ham10000.CLASS_SHARES)
    counts = imbalance_counts(np.array([len(pool) for pool in pools]), shares)
    parts["train"] = [
        rng.choice(pool, n, replace=False) for pool, n in zip(pools, counts, strict=True)
    ]
    chosen = [x for part in parts.values() for x in part] if split == "all" else parts[split]
    return np.sort(np.concatenate(chosen))


# Sources whose split is (partly) fixed outside the config: the fields they would ignore, and
# where the split is changed instead.
_OWN_SPLITS = {
    "ham10000": (
        ("val_fraction", "test_fraction"),
        "`ham-synth prepare`'s --val_fraction and --test_fraction (then a new --data_dir)",
    ),
    "dermamnist": (("val_fraction", "test_fraction"), "MedMNIST's own split; it cannot change"),
    "mnist": (("test_fraction",), "MNIST's own test set; only data.val_fraction applies"),
}


def check_split_fractions(data: ml_collections.ConfigDict) -> None:
    """Refuses data.val_fraction / test_fraction for sources that would silently ignore them."""
    fields, fix = _OWN_SPLITS.get(data.name, ((), ""))
    set_fields = [f"data.{f}={data[f]}" for f in fields if data[f] != config_lib.SOURCE_SPLIT]
    if set_fields:
        raise ValueError(
            f"{', '.join(set_fields)}: {data.name!r} has a fixed split; drop the override. To "
            f"change it use {fix}."
        )


# --- data.classes and data.train_fraction: subsets of any source ---


@dataclasses.dataclass(frozen=True)
class Subset:
    """Some records of `source`, with their labels (possibly renumbered) and class names."""

    source: object
    indices: np.ndarray  # int64[N]: positions in `source`.
    labels: np.ndarray  # int32[N]: the new labels.
    class_names: tuple[str, ...]

    @property
    def subgroups(self) -> dict[str, np.ndarray] | None:
        groups = getattr(self.source, "subgroups", None)
        return None if groups is None else {k: v[self.indices] for k, v in groups.items()}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        record = self.source[int(self.indices[index])]
        return {**record, "label": self.labels[index], "index": index}


def select_classes(source, classes: str, origin: str):
    """`source` restricted to the comma-separated class names in `classes`."""
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in source.class_names]
    if unknown or len(set(wanted)) != len(wanted):
        raise ValueError(
            f"data.classes={classes!r}: {'unknown ' + str(unknown) if unknown else 'repeats'}; "
            f"{origin} has classes {list(source.class_names)}."
        )
    old_labels = np.asarray(source.labels, np.int32)
    new_label = {source.class_names.index(c): i for i, c in enumerate(wanted)}
    indices = np.flatnonzero(np.isin(old_labels, list(new_label)))
    labels = np.asarray([new_label[int(old_labels[i])] for i in indices], np.int32)
    return Subset(source, indices, labels, tuple(wanted))


def train_fraction(source, fraction: float, seed: int) -> Subset:
    """`fraction` of each class's records (rounded up, at least one), drawn by a permutation
    seeded by `seed` (data.split_seed), in their original order."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.train_fraction={fraction}; give a share in (0, 1].")
    labels = np.asarray(source.labels, np.int32)
    rng = np.random.default_rng([seed, 1])  # Not the stream split_from_config draws.
    keep = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        keep.append(rng.permutation(members)[: int(np.ceil(fraction * len(members)))])
    indices = np.sort(np.concatenate(keep))
    return Subset(source, indices, labels[indices], tuple(source.class_names))
