"""HAM10000 from its public download: class names, metadata CSV -> validated records, lesion-grouped
stratified splits, and the square crop + antialiased downsample every stored image goes through.

Nothing here fetches data: the user downloads HAM10000 (Harvard Dataverse or the ISIC archive).
"""

import collections
import csv
import dataclasses
import hashlib
import io
import math
import pathlib

import numpy as np
from PIL import Image

from ham_synth.data import imaging

# Label order used everywhere (and by MedMNIST's DermaMNIST).
CLASS_NAMES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

# Fraction of the 10,015 images in each class (Tschandl et al., Sci. Data 2018), in label order.
CLASS_SHARES = (0.033, 0.051, 0.110, 0.011, 0.111, 0.669, 0.014)

DOWNLOAD_URL = "https://doi.org/10.7910/DVN/DBW86T"
METADATA_FILE = "HAM10000_metadata.csv"
# How `prepare` groups images into splits: by lesion (the default; no lesion in two splits) or by
# image (each image its own lesion, as image-level splits do).
SPLIT_BY = ("lesion", "image")
# Harvard Dataverse serves the same table tab-separated, as `HAM10000_metadata.tab` or without a
# suffix, depending on the download button; any of these names is read, comma or tab separated.
METADATA_NAMES = (METADATA_FILE, "HAM10000_metadata.tab", "HAM10000_metadata")
# The Dataverse copy adds a `dataset` column (vidir_modern, rosendahl, ...); extra columns are kept
# out of the records and ignored.
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
IMAGE_SUFFIXES = (".jpg", ".jpeg")
SPLIT_NAMES = ("train", "val", "test")
# The official ISIC 2018 Task 3 test set, an optional extra split (`prepare --isic2018_test_dir`).
ISIC2018_TEST_SPLIT = "isic2018_test"
ISIC2018_TEST_CSV = "ISIC2018_Task3_Test_GroundTruth.csv"
# As with the metadata, Dataverse may serve it tab-separated, as .tab or without a suffix.
ISIC2018_TEST_NAMES = (
    ISIC2018_TEST_CSV,
    "ISIC2018_Task3_Test_GroundTruth.tab",
    "ISIC2018_Task3_Test_GroundTruth",
)


class DataError(ValueError):
    """Bad input; the message names the file (and row) and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One metadata row whose image was found. `row` is the CSV line number (header = 1)."""

    image_id: str
    lesion_id: str
    dx: str
    dx_type: str
    age: float  # NaN where the metadata leaves it empty (57 rows of the full dataset).
    sex: str
    localization: str
    path: pathlib.Path
    row: int

    @property
    def label(self) -> int:
        return CLASS_NAMES.index(self.dx)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad row or file, as skipped by `skip_bad` and listed in the skip report."""

    where: str  # "path/HAM10000_metadata.csv, row 12" or an image path.
    what: str
    fix: str

    def message(self) -> str:
        return f"{self.where}: {self.what} {self.fix}"


def find_images(manual_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """image_id -> JPEG path, found anywhere under `manual_dir` (HAM10000_images_part_1/, _2/ or
    any other subfolder). Some mirrors ship each part twice; the first path in sorted order wins."""
    images = {}
    for path in sorted(pathlib.Path(manual_dir).rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            images.setdefault(path.stem, path)
    return images


def check_image(path: pathlib.Path) -> str | None:
    """None if the JPEG decodes to the end, else what is wrong with it. Decodes at 1/8 scale
    (JPEG's DCT scaling): every byte is still read, so truncation is caught, at half the cost."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except imaging.DECODE_ERRORS as error:
        return f"cannot decode the image ({error})."
    return None


# Ages a record may hold, in years (the upper bound excluded); empty reads as unknown.
AGE_RANGE = (0, 200)


def _parse_age(value: str) -> float:
    """The age in years, nan when empty; ValueError outside AGE_RANGE or not a number."""
    age = float(value) if value.strip() else math.nan
    if not (math.isnan(age) or AGE_RANGE[0] <= age < AGE_RANGE[1]):
        raise ValueError(value)
    return age


# The ISIC 2018 Task 3 challenge's ground truth: `image` and one-hot class columns (MEL, NV, ...).
CHALLENGE_COLUMNS = ("image", *(dx.upper() for dx in CLASS_NAMES))


def _metadata_fields(row: dict) -> tuple[dict | None, tuple[str, str] | None]:
    """A HAM10000 metadata row -> (Record fields but path and row, None), or (None, (what, fix))
    for a row with fewer fields than the header (csv reads them as None)."""
    short = [c for c in COLUMNS if row[c] is None]
    if short:
        return None, (f"the row ends before its {short} field(s).", "Complete or delete the row.")
    return {c: row[c] for c in COLUMNS}, None


def _challenge_fields(row: dict) -> tuple[dict | None, tuple[str, str] | None]:
    """A challenge ground-truth row -> (fields, None), or (None, (what, fix)). The challenge
    CSV names no lesions, so each image stands for its own lesion."""
    try:
        hot = [dx for dx in CLASS_NAMES if float(row[dx.upper()]) == 1.0]
    except (TypeError, ValueError):  # A short row reads as None.
        values = {dx.upper(): row[dx.upper()] for dx in CLASS_NAMES}
        return None, (f"class columns {values} are not numbers.", "Correct or delete the row.")
    if len(hot) != 1:
        return None, (
            f"{len(hot)} of the class columns {list(CHALLENGE_COLUMNS[1:])} are 1 for "
            f"{row['image']}; exactly one must be.",
            "Correct or delete the row.",
        )
    fields = dict.fromkeys(COLUMNS, "")
    fields.update(image_id=row["image"], lesion_id=row["image"], dx=hot[0])
    return fields, None


def load_records(
    manual_dir: str | pathlib.Path, *, skip_bad: bool = False, check_images: bool = True
) -> tuple[list[Record], list[Problem]]:
    """Reads `manual_dir/HAM10000_metadata.csv` and finds and checks every listed image.

    Returns the good records in CSV order and, with `skip_bad`, the problems that were skipped.
    Without `skip_bad` the first problem raises DataError. A missing file or column always raises.
    """
    manual_dir = pathlib.Path(manual_dir)
    metadata = next(
        (manual_dir / n for n in METADATA_NAMES if (manual_dir / n).is_file()),
        manual_dir / METADATA_FILE,
    )
    if not metadata.is_file():
        found = sorted(p.name for p in manual_dir.glob("*.csv")) if manual_dir.is_dir() else []
        raise DataError(
            f"No {METADATA_FILE} (or {', '.join(METADATA_NAMES[1:])}) in {manual_dir}"
            + (f" (found {found})" if found else "")
            + f". Download HAM10000 ({DOWNLOAD_URL}) and pass the folder that holds "
            f"{METADATA_FILE} and the image folders as --manual_dir."
        )
    return read_labelled_images(metadata, manual_dir, skip_bad=skip_bad, check_images=check_images)


def load_isic2018_test(
    test_dir: str | pathlib.Path, *, skip_bad: bool = False, check_images: bool = True
) -> tuple[list[Record], list[Problem]]:
    """The official ISIC 2018 Task 3 test set (1,512 images): ISIC2018_Task3_Test_GroundTruth.csv
    anywhere under `test_dir`, in the challenge's one-hot layout or the Dataverse copy's HAM10000
    metadata layout, and its images anywhere under `test_dir`. As `load_records` otherwise."""
    test_dir = pathlib.Path(test_dir)
    found = sorted(
        path
        for name in ISIC2018_TEST_NAMES
        for path in (test_dir.rglob(name) if test_dir.is_dir() else [])
        if path.is_file()
    )
    if len(found) != 1:
        raise DataError(
            f"{'Several' if found else 'No'} {ISIC2018_TEST_CSV} (or .tab) under {test_dir}"
            + (f": {[str(p) for p in found]}. Keep one." if found else ". ")
            + f"Download the ISIC 2018 Task 3 test images and ground truth ({DOWNLOAD_URL} has "
            "both) and pass their folder as --isic2018_test_dir."
        )
    return read_labelled_images(found[0], test_dir, skip_bad=skip_bad, check_images=check_images)


def _utf8_text(path: pathlib.Path) -> io.StringIO:
    """The text of the CSV at `path` (a byte-order mark dropped), or a DataError naming the file
    when it is not UTF-8 (a spreadsheet's re-save in another encoding)."""
    try:
        return io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text ({error}); save it as UTF-8, as it was downloaded."
        ) from error


def read_labelled_images(
    csv_path: pathlib.Path, image_dir: pathlib.Path, *, skip_bad: bool, check_images: bool
) -> tuple[list[Record], list[Problem]]:
    """Records of the rows of `csv_path` (HAM10000 metadata or challenge ground-truth layout)
    whose images are found under `image_dir` and decode; see `load_records`."""
    images = find_images(image_dir)
    records, problems, seen = [], [], {}

    def problem(where: str, what: str, fix: str) -> None:
        found = Problem(where, what, fix)
        if not skip_bad:
            raise DataError(found.message())
        problems.append(found)

    with _utf8_text(csv_path) as f:
        delimiter = "\t" if "\t" in f.readline() else ","
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or ()
        if set(CHALLENGE_COLUMNS) <= set(header) and "image_id" not in header:
            row_fields = _challenge_fields
        else:
            row_fields = _metadata_fields
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column(s) {missing}; the header is {reader.fieldnames}. "
                    f"The CSV needs the columns {list(COLUMNS)} (extra columns are ignored), or "
                    f"the ISIC challenge's {list(CHALLENGE_COLUMNS)}; use the downloaded file "
                    "unchanged."
                )
        for row_number, row in enumerate(reader, start=2):
            where = f"{csv_path}, row {row_number}"
            fields, bad = row_fields(row)
            if bad:
                problem(where, *bad)
                continue
            image_id, lesion_id, dx = fields["image_id"], fields["lesion_id"], fields["dx"]
            if not image_id or not lesion_id:
                problem(where, "empty image_id or lesion_id.", "Fill it in or delete the row.")
                continue
            if dx not in CLASS_NAMES:
                problem(
                    where,
                    f"unknown dx {dx!r} for {image_id}.",
                    f"dx must be one of {list(CLASS_NAMES)}; correct or delete the row.",
                )
                continue
            if image_id in seen:
                problem(
                    where,
                    f"duplicate image_id {image_id} (first listed in row {seen[image_id]}).",
                    "Delete one of the two rows.",
                )
                continue
            path = images.get(image_id)
            if path is None:
                problem(
                    where,
                    f"image {image_id}.jpg is listed but not found under {image_dir}.",
                    "Put the image in that folder (any subfolder works), or delete the row.",
                )
                continue
            error = check_image(path) if check_images else None
            if error:
                problem(
                    f"{path} (listed in row {row_number})",
                    error,
                    "Download this image again, or delete its row from the CSV.",
                )
                continue
            try:
                age = _parse_age(fields["age"])
            except ValueError:
                problem(where, f"age {fields['age']!r} is not a number of years in "
                        f"[{AGE_RANGE[0]}, {AGE_RANGE[1]}).", "Correct or empty it.")  # fmt: skip
                continue
            seen[image_id] = row_number
            records.append(
                Record(
                    **{**fields, "age": age},
                    path=path,
                    row=row_number,
                )
            )
    if not records:
        raise DataError(f"{csv_path}: no usable rows; see the problems above.")
    return records, problems


def check_held_out(records: list[Record], held_out: list[Record]) -> set[str]:
    """Raises if a held-out image is also a dataset image; returns the lesion ids both share
    (the same lesion photographed again would leak between training and a held-out test)."""
    shared = {r.image_id for r in records} & {r.image_id for r in held_out}
    if shared:
        raise DataError(
            f"{len(shared)} image(s) such as {sorted(shared)[:3]} are both in HAM10000 and in the "
            "held-out test set; pass the ISIC 2018 test folder, not the HAM10000 one."
        )
    return {r.lesion_id for r in records} & {r.lesion_id for r in held_out}


def write_problems(path: pathlib.Path, problems: list[Problem]) -> None:
    """The skip report: one CSV row per skipped row or file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["where", "problem", "fix"])
        writer.writerows([p.where, p.what, p.fix] for p in problems)


# --- Splits ---


def split_fractions(val_fraction: float, test_fraction: float) -> dict[str, float]:
    """{"train": ..., "val": ..., "test": ...} without the splits whose fraction is 0."""
    train_fraction = 1.0 - val_fraction - test_fraction
    if min(val_fraction, test_fraction) < 0 or train_fraction <= 0:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 and leave "
            "a positive train fraction."
        )
    fractions = {"train": train_fraction, "val": val_fraction, "test": test_fraction}
    return {name: f for name, f in fractions.items() if f > 0}


def _class_rng(seed: int, dx: str) -> np.random.Generator:
    # Seeded per class, so adding rows of one class never reshuffles the others.
    digest = hashlib.sha256(f"{seed}:{dx}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def assign_splits(
    records: list[Record],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    split_by: str = "lesion",
) -> dict[str, str]:
    """image_id -> split name. Every lesion's images land in one split; within each class the
    splits get their fraction of the images, and each split at least one lesion.
    `split_by="image"` treats every image as its own lesion: the image-level split of the report
    we reproduce, where images of one lesion can sit in train and test (an optimistic protocol,
    kept to measure how optimistic).

    Per class, the smallest lesions seed one split each; then, in a seeded random order, each
    lesion goes to the split least filled towards its image target. The random order spreads
    lesions of many images over the splits in proportion (taken largest first, they all went to
    train, whose target is largest, and val and test held single-image lesions only).
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by={split_by!r}; choose one of {SPLIT_BY}.")
    fractions = split_fractions(val_fraction, test_fraction)
    lesions: dict[str, list[Record]] = collections.defaultdict(list)
    for record in records:
        lesions[record.lesion_id if split_by == "lesion" else record.image_id].append(record)
    by_class: dict[str, list[str]] = collections.defaultdict(list)
    for lesion_id, members in lesions.items():
        classes = sorted({r.dx for r in members})
        if len(classes) > 1:
            rows = ", ".join(f"row {r.row} ({r.dx})" for r in members)
            raise DataError(
                f"Lesion {lesion_id} has images of several classes {classes}: {rows}. A lesion has "
                "one diagnosis; correct the dx of these rows."
            )
        by_class[classes[0]].append(lesion_id)

    assignment = {}
    for dx in sorted(by_class):
        lesion_ids = sorted(by_class[dx])
        if len(lesion_ids) < len(fractions):
            raise DataError(
                f"Class {dx} has {len(lesion_ids)} lesion(s) ({lesion_ids}), fewer than the "
                f"{len(fractions)} splits {list(fractions)}, so it cannot appear in every split. "
                "Add images of more lesions of this class, or set a split fraction to 0."
            )
        order = _class_rng(seed, dx).permutation(len(lesion_ids))
        lesion_ids = [lesion_ids[i] for i in order]
        total = sum(len(lesions[lid]) for lid in lesion_ids)
        targets = {name: fraction * total for name, fraction in fractions.items()}
        counts = dict.fromkeys(fractions, 0)
        # The smallest split gets the smallest lesion, and so on; the rest in the random order.
        by_size = sorted(lesion_ids, key=lambda lid: len(lesions[lid]))
        seeds = list(zip(by_size, sorted(fractions, key=fractions.get), strict=False))
        seeded = {lid for lid, _ in seeds}
        rest = [(lid, None) for lid in lesion_ids if lid not in seeded]
        for lesion_id, seed_split in [*seeds, *rest]:
            name = seed_split or min(counts, key=lambda s: counts[s] / targets[s])
            counts[name] += len(lesions[lesion_id])
            assignment.update({r.image_id: name for r in lesions[lesion_id]})
    return assignment


def write_split_membership(
    path: pathlib.Path, records: list[Record], assignment: dict[str, str]
) -> None:
    """One row per image: image_id, lesion_id, dx, split."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "lesion_id", "dx", "split"])
        writer.writerows([r.image_id, r.lesion_id, r.dx, assignment[r.image_id]] for r in records)


# --- Images ---


def load_square(path: pathlib.Path, size: int) -> Image.Image:
    """The image at `path`, center-cropped and downsampled to `size`
    (imaging.center_crop_resize)."""
    try:
        with Image.open(path) as image:
            return imaging.center_crop_resize(image, size)
    except imaging.DECODE_ERRORS as error:
        raise DataError(
            f"{path}: cannot decode the image ({error}). Download it again, or delete its row from "
            f"the metadata CSV (or pass --skip_bad)."
        ) from error
