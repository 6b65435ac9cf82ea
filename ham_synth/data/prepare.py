"""`ham-synth prepare`: a user's download -> a prepared dataset, with its split membership, skip
report, per-split class and lesion counts and a PNG grid of examples per class beside it.
"""

import collections
import csv
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from ham_synth import fileio, grids
from ham_synth.data import ham10000, ham10000_tfds

STATS_FILE = "stats.txt"
EXAMPLES_FILE = "examples.png"
EXAMPLES_PER_CLASS = 8


def run(source: str, manual_dir: str, **options) -> pathlib.Path:
    """The `prepare` verb: the dataset `source` from the download in `manual_dir`."""
    if source not in PREPARERS:
        raise ValueError(f"Unknown --source={source!r}; choose one of {sorted(PREPARERS)}.")
    return PREPARERS[source](manual_dir=manual_dir, **options)


def prepare_ham10000(
    *,
    manual_dir: str,
    data_dir: str = "",
    image_size: int = 64,
    skip_bad: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    isic2018_test_dir: str = "",
    split_by: str = "lesion",
) -> pathlib.Path:
    """Builds `ham10000/<image_size>` under `data_dir` (TFDS's default when empty) and returns the
    dataset's folder. A build that fails leaves no complete-looking dataset: TFDS writes into a
    temporary folder and renames it only at the end."""
    if image_size not in ham10000_tfds.IMAGE_SIZES:
        raise ValueError(
            f"--image_size={image_size}; HAM10000 is prepared at {ham10000_tfds.IMAGE_SIZES}."
        )
    manual = pathlib.Path(manual_dir)
    if not manual.is_dir() or not any(manual.iterdir()):
        instructions = " ".join(ham10000_tfds.Ham10000.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
        raise FileNotFoundError(
            f"--manual_dir={manual_dir} is {'empty' if manual.is_dir() else 'not a folder'}. "
            + instructions
        )
    split_options = dict(val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed)
    if split_by not in ham10000.SPLIT_BY:
        raise ValueError(f"--split_by={split_by!r}; choose one of {ham10000.SPLIT_BY}.")
    builder = ham10000_tfds.Ham10000(
        config=ham10000_tfds.config_name(image_size, split_by),
        data_dir=data_dir or None,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        skip_bad=skip_bad,
        isic2018_test_dir=isic2018_test_dir,
    )
    if builder.is_prepared():
        stored = dict(builder.info.metadata.get("split_options", {}))
        if stored != split_options:
            raise FileExistsError(
                f"{builder.data_dir} was prepared with splits {stored}, not {split_options}. "
                "Delete that folder to rebuild it, or pass a different --data_dir."
            )
        if isic2018_test_dir and ham10000.ISIC2018_TEST_SPLIT not in builder.info.splits:
            raise FileExistsError(
                f"{builder.data_dir} was prepared without {ham10000.ISIC2018_TEST_SPLIT}. Delete "
                "that folder to rebuild it with the test set, or pass a different --data_dir."
            )
        logging.info(
            "%s is already prepared (splits %s); delete it to rebuild.",
            builder.data_dir,
            list(builder.info.splits),
        )
    else:
        builder.download_and_prepare(
            file_format="array_record",
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
        )
        dataset_dir = pathlib.Path(builder.data_dir)
        ham10000.write_split_membership(
            dataset_dir / ham10000_tfds.SPLIT_MEMBERSHIP_FILE, builder.records, builder.assignment
        )
        if builder.problems:
            report = dataset_dir / ham10000_tfds.SKIP_REPORT_FILE
            ham10000.write_problems(report, builder.problems)
            logging.warning(
                "Skipped %d bad rows or images (listed in %s):\n%s",
                len(builder.problems),
                report,
                "\n".join(p.message() for p in builder.problems[:20]),
            )
    dataset_dir = pathlib.Path(builder.data_dir)
    stats = format_split_stats(read_split_membership(dataset_dir))
    fileio.write_text(dataset_dir / STATS_FILE, stats + "\n")
    write_examples(builder, dataset_dir / EXAMPLES_FILE)
    print(f"Prepared {dataset_dir}\n{stats}\nExamples per class: {dataset_dir / EXAMPLES_FILE}")
    return dataset_dir


PREPARERS = {"ham10000": prepare_ham10000}


def read_split_membership(dataset_dir: pathlib.Path) -> list[dict]:
    with (dataset_dir / ham10000_tfds.SPLIT_MEMBERSHIP_FILE).open(newline="") as f:
        return list(csv.DictReader(f))


def split_counts(rows: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """split -> dx -> (images, lesions), from the split membership rows."""
    images = collections.Counter((r["split"], r["dx"]) for r in rows)
    lesions = collections.Counter(
        (split, dx) for split, dx, _ in {(r["split"], r["dx"], r["lesion_id"]) for r in rows}
    )
    names = (*ham10000.SPLIT_NAMES, ham10000.ISIC2018_TEST_SPLIT)
    splits = [s for s in names if any(r["split"] == s for r in rows)]
    return {s: {dx: (images[s, dx], lesions[s, dx]) for dx in ham10000.CLASS_NAMES} for s in splits}


def format_split_stats(rows: list[dict]) -> str:
    """A table: one line per split, `images/lesions` per class and in total."""
    counts = split_counts(rows)
    header = f"{'split':14s}" + "".join(f"{dx:>12s}" for dx in (*ham10000.CLASS_NAMES, "total"))
    lines = ["images/lesions per split and class", header]
    for split, per_class in counts.items():
        total_images = sum(n for n, _ in per_class.values())
        total_lesions = sum(n for _, n in per_class.values())
        cells = [f"{n}/{m}" for n, m in per_class.values()] + [f"{total_images}/{total_lesions}"]
        lines.append(f"{split:14s}" + "".join(f"{c:>12s}" for c in cells))
    return "\n".join(lines)


def write_examples(builder, path: pathlib.Path, per_class: int = EXAMPLES_PER_CLASS) -> None:
    """A PNG grid, one row per class, of the first `per_class` train images of each class (read
    back through the data source, so the grid also checks the stored images)."""
    source = builder.as_data_source("train")
    num_classes = len(ham10000.CLASS_NAMES)
    size = builder.builder_config.image_size
    rows = [[] for _ in range(num_classes)]
    for i in range(len(source)):
        record = source[i]
        if len(rows[record["label"]]) < per_class:
            rows[record["label"]].append(record["image"])
        if all(len(r) == per_class for r in rows):
            break
    blank = np.full((size, size, 3), 255, np.uint8)
    images = [image for r in rows for image in r + [blank] * (per_class - len(r))]
    pixels = np.stack(images).astype(np.float32) / 127.5 - 1.0
    grid = grids.make_grid(pixels, rows=num_classes)
    grids.write_png(path, grid, scale=grids.display_scale(size), row_labels=ham10000.CLASS_NAMES)
