"""Real + synthetic training data (`config.data.synthetic`): `ham-synth sample` folders, read
through their manifest.csv, matched to the real classes by name, and chosen by a policy.

- add: every synthetic image (or `per_class` of each class) joins the real ones.
- balance: each class is topped up to `per_class` images (0: to the largest real class).
- ratio: a `ratio` share of the draws of each class the set holds is synthetic; every class
  keeps its share of the real-only stream, so the synthetic images add to the real draw policy
  (`data.balance_alpha`, class weights) and never replace it.
- only: train on synthetic images alone (still tested on real ones).

The pipeline draws the real stream as a real-only run with the same seed would (shuffled epochs
or class-balanced draws: `data.balance_alpha` weighs the real records only) and mixes the
synthetic records in at `Mix.weight` (data/pipeline.py); evaluation never reads synthetic images.
"""

import csv
import dataclasses
import pathlib

import ml_collections
import numpy as np

from ham_synth import config_lib
from ham_synth.data import image_folder, sources

POLICIES = ("add", "balance", "ratio", "only")
# Policies that mix by image count: every record, real or synthetic, equally likely.
COUNT_POLICIES = ("add", "balance")
MANIFEST = "manifest.csv"
# A chosen set whose decoded pixels fit in this many bytes is decoded once, up front, instead of
# at every draw (at 16², per-draw PNG decoding took a third of a batch's assembly time).
IN_MEMORY_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Mix:
    """The chosen synthetic records and the share of the training stream they take."""

    source: image_folder.FolderSource | sources.ArraySource
    # Probability that a stream position reads a synthetic record: any position (add, balance,
    # only) or, `within_class`, a position the real stream drew for a class the set holds (ratio).
    weight: float
    counts: np.ndarray  # int64[K]: synthetic images chosen per class.
    within_class: bool = False


def read_manifests(dirs: list[str]) -> list[tuple[pathlib.Path, str, int]]:
    """(image path, class name, index of its folder in `dirs`) of every row of each folder's
    manifest.csv, in order."""
    rows = []
    for index, folder in enumerate(map(pathlib.Path, dirs)):
        manifest = folder / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"data.synthetic.dirs: no {MANIFEST} in {folder}; point it at a `ham-synth "
                "sample` output folder."
            )
        with open(manifest, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"file", "class"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{manifest} lacks the column(s) {sorted(missing)}.")
            rows += [(folder / row["file"], row["class"], index) for row in reader]
    return rows


def make_mix(
    synthetic: ml_collections.ConfigDict,
    class_names: tuple[str, ...],
    real_labels: np.ndarray,
    image_size: int,
    balance_alpha: float = 0.0,
) -> Mix | None:
    """The synthetic side of the training stream, or None when `synthetic.dirs` is empty;
    `balance_alpha` is the real stream's (data.balance_alpha)."""
    dirs = [d.strip() for d in synthetic.dirs.split(",") if d.strip()]
    if not dirs:
        return None
    if synthetic.policy not in POLICIES:
        raise ValueError(f"data.synthetic.policy={synthetic.policy!r}; choose one of {POLICIES}.")
    if synthetic.policy in COUNT_POLICIES and balance_alpha > 0:
        raise ValueError(
            f"data.synthetic.policy={synthetic.policy!r} mixes by image count (every real or "
            f"synthetic image equally likely), but data.balance_alpha={balance_alpha} also draws "
            "the real images class-balanced, so the classes would be balanced twice and the "
            "largest one shrunk far below its share. Set --config.data.balance_alpha=0, or use "
            "policy 'ratio' (class-balanced real draws plus a fixed synthetic share)."
        )
    if synthetic.policy == "ratio" and not 0 < synthetic.ratio < 1:
        raise ValueError(f"data.synthetic.ratio={synthetic.ratio}; the ratio policy needs (0, 1).")
    if synthetic.per_class < 0:
        raise ValueError(f"data.synthetic.per_class={synthetic.per_class} must be >= 0.")
    if synthetic.loss_weight < 0 or (synthetic.policy == "only" and synthetic.loss_weight == 0):
        raise ValueError(
            f"data.synthetic.loss_weight={synthetic.loss_weight} with policy "
            f"{synthetic.policy!r}: give a weight >= 0 (1: as a real image), and above 0 when "
            "training on synthetic images only."
        )
    rows = read_manifests(dirs)
    names = sorted({name for _, name, _ in rows})
    unknown = [name for name in names if name not in class_names]
    if unknown:
        raise ValueError(
            f"data.synthetic: classes {unknown} of {dirs} are not among the real data's "
            f"{list(class_names)}; the manifests name {names}. Sample with the same class names "
            "(a generator trained on this data), or drop those folders."
        )
    labels = np.asarray([class_names.index(name) for _, name, _ in rows], np.int32)
    folders = np.asarray([index for _, _, index in rows], np.int32)
    real_counts = np.bincount(real_labels, minlength=len(class_names))
    available = np.bincount(labels, minlength=len(class_names))
    chosen = config_lib.named_classes(
        synthetic.get("classes", ""), class_names, "data.synthetic.classes"
    )
    wanted = wanted_counts(synthetic, available, real_counts)
    if chosen:  # The other classes take none, whatever the policy would top them up to.
        named = np.isin(class_names, chosen)
        available, wanted = np.where(named, available, 0), np.where(named, wanted, 0)
    short = {class_names[c]: (int(wanted[c]), int(available[c]))
             for c in range(len(class_names)) if wanted[c] > available[c]}  # fmt: skip
    if short:
        detail = ", ".join(f"{name}: needs {w}, has {a}" for name, (w, a) in short.items())
        raise ValueError(
            f"data.synthetic policy {synthetic.policy!r} (per_class={synthetic.per_class}) needs "
            f"more synthetic images than {dirs} hold ({detail}); sample more with `ham-synth "
            "sample --num_per_class`, or lower data.synthetic.per_class."
        )
    keep = np.sort(np.concatenate([
        first_evenly(np.flatnonzero(labels == c), folders[labels == c], wanted[c])
        for c in range(len(class_names))
    ]))  # fmt: skip
    if not len(keep):
        raise ValueError(
            f"data.synthetic policy {synthetic.policy!r} chose no synthetic image from {dirs}."
        )
    paths = tuple(rows[i][0] for i in keep)
    absent = [str(path) for path in paths if not path.is_file()]
    if absent:
        raise FileNotFoundError(
            f"data.synthetic: {len(absent)} image(s) listed in the manifests are missing, e.g. "
            f"{absent[:3]}; sample the folder again or remove their rows."
        )
    counts = np.bincount(labels[keep], minlength=len(class_names))
    if synthetic.policy == "ratio":
        weight = synthetic.ratio
    elif synthetic.policy == "only":
        weight = 1.0
    else:  # add, balance: each record, real or synthetic, equally likely at every position.
        weight = len(keep) / (len(keep) + len(real_labels))
    source = image_folder.FolderSource(paths, labels[keep], class_names, image_size)
    if len(paths) * image_size**2 * 3 <= IN_MEMORY_BYTES:
        source = decoded(source)
    return Mix(source, weight, counts, within_class=synthetic.policy == "ratio")


def first_evenly(rows: np.ndarray, folders: np.ndarray, count: int) -> np.ndarray:
    """`count` of `rows` (one class's), as evenly from each of their `folders` as they allow and
    each folder's first in manifest order: real + every generator's set takes from every set,
    not all from the first."""
    queues = [rows[folders == f] for f in np.unique(folders)]
    taken = np.zeros(len(queues), np.int64)
    for _ in range(min(count, len(rows))):  # Round robin over the folders with images left.
        k = min((k for k, q in enumerate(queues) if taken[k] < len(q)), key=lambda k: taken[k])
        taken[k] += 1
    return np.concatenate([q[:n] for q, n in zip(queues, taken, strict=True)] or [rows[:0]])


def decoded(source: image_folder.FolderSource) -> sources.ArraySource:
    """`source` with every image decoded into memory, in the same order."""
    images = np.stack([source[i]["image"] for i in range(len(source))])
    return sources.ArraySource(images, source.labels, source.class_names)


def wanted_counts(synthetic, available: np.ndarray, real_counts: np.ndarray) -> np.ndarray:
    """Synthetic images to take per class, given how many the folders hold (`available`):
    balance tops each class up to `per_class` (0: the largest real class); add, ratio and only
    take `per_class` of each class they have (0: all)."""
    if synthetic.policy == "balance":
        target = synthetic.per_class or int(real_counts.max())
        return np.maximum(target - real_counts, 0)
    if synthetic.per_class:
        return np.where(available > 0, synthetic.per_class, 0)
    return available
