"""A tiny fake HAM10000 download for tests: small JPEGs in the download layout and a metadata CSV
whose lesions repeat (as in the real data)."""

import csv
import pathlib

import numpy as np
from PIL import Image

from ham_synth.data import ham10000

COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
# Images per lesion, for each class: 3-4 lesions per class, some photographed twice or thrice.
LESION_SIZES = (2, 1, 1, 1)
WIDTH, HEIGHT, BORDER = 16, 12, 2  # Landscape like the real 600x450; the border is cropped away.


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct RGB per class, so a stored image can be checked against its label."""
    return (30 * label + 40, 255 - 30 * label, 60 + 25 * label)


def write_jpeg(path: pathlib.Path, label: int) -> None:
    """The class colour in the central square, black in the columns the center crop drops."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, BORDER : WIDTH - BORDER] = class_colour(label)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=95)


def make_rows() -> list[dict]:
    rows, n = [], 0
    for label, dx in enumerate(ham10000.CLASS_NAMES):
        sizes = LESION_SIZES if label % 2 else LESION_SIZES[:3] + (2,)
        for lesion, size in enumerate(sizes):
            for _ in range(size):
                rows.append(
                    {
                        "lesion_id": f"HAM_{label}{lesion:03d}",
                        "image_id": f"ISIC_{n:07d}",
                        "dx": dx,
                        "dx_type": "histo",
                        "age": "" if n == 0 else f"{30 + n}.0",
                        "sex": "female" if n % 2 else "male",
                        "localization": "back",
                    }
                )
                n += 1
    return rows


def write_metadata(directory: pathlib.Path, rows: list[dict], columns=COLUMNS) -> pathlib.Path:
    path = directory / ham10000.METADATA_FILE
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_download(directory: pathlib.Path, rows: list[dict] | None = None) -> list[dict]:
    """Writes the download into `directory` (half the images in each part folder); returns rows."""
    rows = make_rows() if rows is None else rows
    for i, row in enumerate(rows):
        part = "HAM10000_images_part_1" if i % 2 else "HAM10000_images_part_2"
        label = ham10000.CLASS_NAMES.index(row["dx"])
        write_jpeg(directory / part / f"{row['image_id']}.jpg", label)
    write_metadata(directory, rows)
    return rows


def image_path(directory: pathlib.Path, image_id: str) -> pathlib.Path:
    return next(directory.rglob(f"{image_id}.jpg"))


def make_isic2018_test(directory: pathlib.Path, layout: str = "challenge") -> list[dict]:
    """One image per class (ISIC 2018 test-set ids) and ISIC2018_Task3_Test_GroundTruth.csv, in
    the challenge's one-hot layout or the Dataverse copy's HAM10000 metadata layout."""
    rows = []
    for label, dx in enumerate(ham10000.CLASS_NAMES):
        image_id = f"ISIC_{34524 + label:07d}"
        write_jpeg(directory / "ISIC2018_Task3_Test_Input" / f"{image_id}.jpg", label)
        if layout == "challenge":
            one_hot = {c.upper(): "1.0" if c == dx else "0.0" for c in ham10000.CLASS_NAMES}
            rows.append({"image": image_id, **one_hot})
        else:
            rows.append({**make_rows()[0], "lesion_id": f"HAM_9{label:03d}", "image_id": image_id})
            rows[-1]["dx"] = dx
    columns = ham10000.CHALLENGE_COLUMNS if layout == "challenge" else COLUMNS
    with (directory / ham10000.ISIC2018_TEST_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return rows
