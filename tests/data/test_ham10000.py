"""HAM10000: metadata validation, lesion-grouped splits, the TFDS builder and `prepare`, on a tiny
fake download (and on the real sample in ../shared when it is there)."""

import collections
import csv
import dataclasses
import math
import subprocess
import sys

import fake_ham10000
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO, load_config

from ham_synth import parallel, tasks, workdir
from ham_synth.data import ham10000, ham10000_tfds, imaging, prepare, sources
from ham_synth.evaluators import classification

REAL_SAMPLE = REPO.parent / "shared" / "data" / "ham10000_sample"


@pytest.fixture
def download(tmp_path):
    directory = tmp_path / "download"
    rows = fake_ham10000.make_download(directory)
    return directory, rows


def _prepare(download_dir, data_dir, **options):
    return prepare.prepare_ham10000(manual_dir=str(download_dir), data_dir=str(data_dir), **options)


def _read_split(data_dir, split):
    source = tfds.data_source("ham10000/64", split=split, data_dir=str(data_dir))
    return [source[i] for i in range(len(source))]


# --- Metadata -> records ---


def test_records_follow_the_csv_and_find_images_in_both_parts(download):
    directory, rows = download
    records, problems = ham10000.load_records(directory)
    assert not problems
    assert [r.image_id for r in records] == [row["image_id"] for row in rows]
    assert {r.path.parent.name for r in records} == {
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
    }
    assert records[3].label == ham10000.CLASS_NAMES.index(rows[3]["dx"])
    assert records[0].row == 2 and math.isnan(records[0].age) and records[1].age == 31.0


def test_dataverse_variant_with_a_dataset_column_and_other_subfolders(tmp_path):
    rows = [{**row, "dataset": "vidir_modern"} for row in fake_ham10000.make_rows()]
    for row in rows:
        label = ham10000.CLASS_NAMES.index(row["dx"])
        fake_ham10000.write_jpeg(tmp_path / "unzipped" / "all" / f"{row['image_id']}.jpg", label)
    fake_ham10000.write_metadata(tmp_path, rows, columns=("dataset", *fake_ham10000.COLUMNS))
    records, _ = ham10000.load_records(tmp_path)
    assert len(records) == len(rows)
    # Dataverse's tab-separated `HAM10000_metadata.tab` reads the same.
    text = (tmp_path / ham10000.METADATA_FILE).read_text()
    (tmp_path / ham10000.METADATA_FILE).unlink()
    (tmp_path / "HAM10000_metadata.tab").write_text(text.replace(",", "\t"))
    tabbed, _ = ham10000.load_records(tmp_path)
    assert tabbed == records


def _break(directory, rows, how):
    """Applies one kind of damage to the download; returns the text the error must contain."""
    if how == "missing_metadata":
        (directory / ham10000.METADATA_FILE).unlink()
        return rf"No {ham10000.METADATA_FILE} \(or HAM10000_metadata.tab, .*\) in .*--manual_dir"
    if how == "missing_column":
        columns = [c for c in fake_ham10000.COLUMNS if c != "lesion_id"]
        fake_ham10000.write_metadata(directory, rows, columns=columns)
        return r"HAM10000_metadata.csv: missing column\(s\) \['lesion_id'\].*unchanged"
    if how == "unknown_dx":
        rows[4]["dx"] = "melanoma"
        fake_ham10000.write_metadata(directory, rows)
        return r"row 6: unknown dx 'melanoma'.*correct or delete the row"
    if how == "missing_image":
        fake_ham10000.image_path(directory, rows[2]["image_id"]).unlink()
        return rf"row 4: image {rows[2]['image_id']}.jpg is listed but not found.*delete the row"
    if how == "truncated_jpeg":
        path = fake_ham10000.image_path(directory, rows[5]["image_id"])
        path.write_bytes(path.read_bytes()[:200])
        return rf"{rows[5]['image_id']}.jpg \(listed in row 7\): cannot decode.*Download this image"
    if how == "unreadable_jpeg":
        fake_ham10000.image_path(directory, rows[5]["image_id"]).write_bytes(b"not a jpeg")
        return r"\(listed in row 7\): cannot decode the image.*Download this image again"
    if how == "short_row":  # A row cut after four fields: csv reads the rest as None.
        path = directory / ham10000.METADATA_FILE
        lines = path.read_text().splitlines()
        lines[5] = ",".join(lines[5].split(",")[:4])
        path.write_text("\n".join(lines) + "\n")
        return r"row 6: the row ends before its \['age', 'sex', 'localization'\] field"
    if how == "age_out_of_range":
        rows[4]["age"] = "-5"
        fake_ham10000.write_metadata(directory, rows)
        return r"row 6: age '-5' is not a number of years in \[0, 200\)"
    if how == "not_utf8":  # Re-saved by a spreadsheet in Latin-1.
        rows[4]["localization"] = "r\u00fccken"
        fake_ham10000.write_metadata(directory, rows)
        path = directory / ham10000.METADATA_FILE
        path.write_bytes(path.read_text().encode("latin-1"))
        return r"HAM10000_metadata.csv: not UTF-8 text .*save it as UTF-8"
    if how == "duplicate_image_id":
        rows.insert(8, dict(rows[1]))
        fake_ham10000.write_metadata(directory, rows)
        return rf"row 10: duplicate image_id {rows[1]['image_id']} \(first listed in row 3\)"
    raise ValueError(how)


BAD_INPUTS = (
    "missing_metadata",
    "missing_column",
    "unknown_dx",
    "missing_image",
    "truncated_jpeg",
    "unreadable_jpeg",
    "duplicate_image_id",
    "short_row",
    "age_out_of_range",
    "not_utf8",
)


@pytest.mark.parametrize("how", BAD_INPUTS)
def test_bad_input_raises_one_error_naming_the_file_or_row_and_the_fix(download, how):
    directory, rows = download
    pattern = _break(directory, rows, how)
    with pytest.raises(ham10000.DataError, match=pattern):
        ham10000.load_records(directory)


@pytest.mark.parametrize("how", ["unknown_dx", "missing_image", "truncated_jpeg", "short_row"])
def test_skip_bad_drops_only_the_bad_row(download, how):
    directory, rows = download
    _break(directory, rows, how)
    records, problems = ham10000.load_records(directory, skip_bad=True)
    assert len(records) == len(rows) - 1 and len(problems) == 1


def test_lesion_with_two_diagnoses_is_an_error(download):
    directory, rows = download
    rows[1]["dx"] = rows[2]["dx"] = "bcc"  # rows 0 and 1 share a lesion.
    fake_ham10000.write_metadata(directory, rows)
    records, _ = ham10000.load_records(directory)
    with pytest.raises(ham10000.DataError, match=r"Lesion HAM_0000 .*\['akiec', 'bcc'\]: row 2"):
        ham10000.assign_splits(records)


# --- Splits ---


def _synthetic_records(num_lesions=3000, seed=0):
    """Lesions with 1-4 images each and HAM10000's class shares."""
    rng = np.random.default_rng(seed)
    records = []
    shares = np.asarray(ham10000.CLASS_SHARES) / sum(ham10000.CLASS_SHARES)
    labels = rng.choice(len(shares), num_lesions, p=shares)
    sizes = rng.choice([1, 1, 1, 2, 2, 3, 4], num_lesions)
    for lesion, (label, size) in enumerate(zip(labels, sizes, strict=True)):
        for _ in range(size):
            records.append(
                ham10000.Record(
                    image_id=f"ISIC_{len(records):07d}",
                    lesion_id=f"HAM_{lesion:07d}",
                    dx=ham10000.CLASS_NAMES[label],
                    dx_type="histo",
                    age=50.0,
                    sex="male",
                    localization="back",
                    path=None,
                    row=len(records) + 2,
                )
            )
    return records


@pytest.mark.parametrize(("val", "test"), [(0.1, 0.2), (0.0, 0.2)])
def test_split_groups_lesions_stratifies_classes_and_is_deterministic(val, test):
    records = _synthetic_records()
    assignment = ham10000.assign_splits(records, val_fraction=val, test_fraction=test, seed=3)
    targets = ham10000.split_fractions(val, test)
    assert set(assignment.values()) == set(targets)

    splits_of_lesion = collections.defaultdict(set)
    for r in records:
        splits_of_lesion[r.lesion_id].add(assignment[r.image_id])
    assert all(len(s) == 1 for s in splits_of_lesion.values())

    for dx in ham10000.CLASS_NAMES:
        in_class = [assignment[r.image_id] for r in records if r.dx == dx]
        counts = collections.Counter(in_class)
        for split, fraction in targets.items():
            # Whole lesions of up to 4 images: within 4 images or 2% of the class.
            assert abs(counts[split] - fraction * len(in_class)) <= max(4, 0.02 * len(in_class))
            assert counts[split] >= 1, (dx, split)

    # Lesions of several images spread over the splits in proportion: in each split about the
    # share of images from such lesions that the whole set has (0.78 here).
    sizes = collections.Counter(r.lesion_id for r in records)
    multi = {s: np.mean([sizes[r.lesion_id] > 1 for r in records if assignment[r.image_id] == s])
             for s in targets}  # fmt: skip
    overall = np.mean([sizes[r.lesion_id] > 1 for r in records])
    assert all(abs(share - overall) < 0.05 for share in multi.values()), (multi, overall)

    assert ham10000.assign_splits(records, val_fraction=val, test_fraction=test, seed=3) == (
        assignment
    )
    other = ham10000.assign_splits(records, val_fraction=val, test_fraction=test, seed=4)
    assert other != assignment


def test_image_level_splits_treat_every_image_as_its_own_lesion():
    records = _synthetic_records()
    by_image = ham10000.assign_splits(records, seed=3, split_by="image")
    alone = [dataclasses.replace(r, lesion_id=r.image_id) for r in records]
    assert by_image == ham10000.assign_splits(alone, seed=3)
    splits_of_lesion = collections.defaultdict(set)
    for r in records:
        splits_of_lesion[r.lesion_id].add(by_image[r.image_id])
    assert any(len(s) > 1 for s in splits_of_lesion.values()), "lesions now cross splits"
    with pytest.raises(ValueError, match="split_by='patient'"):
        ham10000.assign_splits(records, split_by="patient")


def test_a_class_with_too_few_lesions_for_every_split_is_an_error(download):
    directory, rows = download
    records, _ = ham10000.load_records(directory)
    few = [r for r in records if r.dx != "df" or r.lesion_id.endswith("000")]
    with pytest.raises(ham10000.DataError, match="Class df has 1 lesion.*set a split fraction"):
        ham10000.assign_splits(few)


# --- The TFDS builder and prepare ---


def test_prepare_writes_every_image_once_with_its_metadata(download, tmp_path, capsys):
    directory, rows = download
    dataset_dir = _prepare(directory, tmp_path / "tfds")
    by_id = {row["image_id"]: row for row in rows}
    with (dataset_dir / ham10000_tfds.SPLIT_MEMBERSHIP_FILE).open() as f:
        membership = {row["image_id"]: row["split"] for row in csv.DictReader(f)}
    seen = []
    for split in ("train", "val", "test"):
        for record in _read_split(tmp_path / "tfds", split):
            image_id = record["image_id"].decode()
            row = by_id[image_id]
            seen.append(image_id)
            assert membership[image_id] == split
            assert ham10000.CLASS_NAMES[record["label"]] == row["dx"]
            assert record["lesion_id"].decode() == row["lesion_id"]
            assert record["sex"].decode() == row["sex"]
            assert record["localization"].decode() == "back"
            age = float(row["age"]) if row["age"] else math.nan
            np.testing.assert_equal(record["age"], np.float32(age))
            image = record["image"]
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            # The center crop dropped the black border columns (a squash would keep 8 of 64).
            colour = fake_ham10000.class_colour(record["label"])
            np.testing.assert_allclose(image[16:48, 16:48].mean(axis=(0, 1)), colour, atol=6)
            assert image[:, [0, -1]].mean() > 0.6 * np.mean(colour)
    assert sorted(seen) == sorted(by_id)
    # The source's subgroups: sex, age band and body site per record, for subgroup metrics.
    data = load_config("vae.py:smoke", **{"data.name": "ham10000", "data.image_size": 64,
                                          "data.data_dir": str(tmp_path / "tfds"),
                                          "data.split": "test"}).data  # fmt: skip
    source = sources.get_source(data)
    test_rows = [by_id[r["image_id"].decode()] for r in _read_split(tmp_path / "tfds", "test")]
    assert source.subgroups["sex"].tolist() == [r["sex"] for r in test_rows]
    assert source.subgroups["localization"].tolist() == ["back"] * len(test_rows)
    assert source.subgroups["age"].tolist() == [
        ham10000_tfds.age_band(float(r["age"]) if r["age"] else math.nan) for r in test_rows
    ]
    assert (dataset_dir / prepare.EXAMPLES_FILE).stat().st_size > 0
    out = capsys.readouterr().out
    assert "train" in out and "images/lesions" in out
    assert (dataset_dir / prepare.STATS_FILE).read_text().strip() in out


def test_prepared_splits_keep_lesions_together_and_every_class_everywhere(download, tmp_path):
    directory, _ = download
    _prepare(directory, tmp_path / "tfds")
    lesions, classes = {}, {}
    for split in ("train", "val", "test"):
        records = _read_split(tmp_path / "tfds", split)
        lesions[split] = {r["lesion_id"] for r in records}
        classes[split] = {int(r["label"]) for r in records}
        assert classes[split] == set(range(7)), split
    assert not lesions["train"] & lesions["val"]
    assert not lesions["train"] & lesions["test"]
    assert not lesions["val"] & lesions["test"]


def test_skip_bad_prepares_the_rest_and_reports_what_it_skipped(download, tmp_path):
    directory, rows = download
    _break(directory, rows, "truncated_jpeg")
    with pytest.raises(ham10000.DataError):
        _prepare(directory, tmp_path / "tfds")
    dataset_dir = _prepare(directory, tmp_path / "tfds", skip_bad=True)
    with (dataset_dir / ham10000_tfds.SKIP_REPORT_FILE).open() as f:
        report = list(csv.DictReader(f))
    assert len(report) == 1 and rows[5]["image_id"] in report[0]["where"]
    total = sum(len(_read_split(tmp_path / "tfds", s)) for s in ("train", "val", "test"))
    assert total == len(rows) - 1


def test_a_failed_prepare_leaves_nothing_that_loads(download, tmp_path, monkeypatch):
    directory, _ = download
    calls = []

    def fail_on_the_fifth_image(path, size):
        calls.append(path)
        if len(calls) == 5:
            raise ham10000.DataError(f"{path}: simulated failure")
        return imaging.center_crop_resize(fake_ham10000.Image.open(path), size)

    monkeypatch.setattr(ham10000, "load_square", fail_on_the_fifth_image)
    with pytest.raises(ham10000.DataError, match="simulated"):
        _prepare(directory, tmp_path / "tfds")
    assert not ham10000_tfds.Ham10000(config="64", data_dir=str(tmp_path / "tfds")).is_prepared()
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))
    with pytest.raises(Exception, match="not found|No prepared|does not exist"):
        tfds.data_source("ham10000/64", split="train", data_dir=str(tmp_path / "tfds"))


def test_preparing_again_reuses_it_unless_the_split_options_differ(download, tmp_path):
    directory, _ = download
    first = _prepare(directory, tmp_path / "tfds")
    assert _prepare(directory, tmp_path / "tfds") == first
    with pytest.raises(FileExistsError, match="Delete that folder"):
        _prepare(directory, tmp_path / "tfds", split_seed=1)


def test_an_image_level_dataset_is_its_own_and_data_split_by_reads_it(download, tmp_path):
    directory, rows = download
    image_dir = _prepare(directory, tmp_path / "tfds", split_by="image")
    assert image_dir.parent.name == "64_image"  # Beside, never instead of, ham10000/64.

    def source(split_by):
        data = load_config("vae.py:smoke", **{"data.name": "ham10000", "data.image_size": 64,
                                              "data.data_dir": str(tmp_path / "tfds"),
                                              "data.split": "all",
                                              "data.split_by": split_by}).data  # fmt: skip
        return sources.get_source(data)

    assert len(source("image")) == len(rows)
    with pytest.raises(FileNotFoundError, match="--split_by=lesion"):
        source("lesion")  # Not prepared in this data_dir.
    digits = load_config("vae.py:smoke", **{"data.split_by": "image"}).data
    with pytest.raises(ValueError, match="applies to sources with lesions"):
        sources.get_source(digits)


def test_eighty_twenty_has_no_val_split(download, tmp_path):
    directory, _ = download
    dataset_dir = _prepare(directory, tmp_path / "tfds", val_fraction=0.0, test_fraction=0.2)
    builder = ham10000_tfds.Ham10000(config="64", data_dir=str(tmp_path / "tfds"))
    assert set(builder.info.splits) == {"train", "test"}
    assert "val" not in (dataset_dir / prepare.STATS_FILE).read_text()


# --- The optional ISIC 2018 Task 3 test set ---


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["challenge", "ham10000"])
def test_isic2018_test_set_becomes_a_held_out_split(download, tmp_path, layout):
    directory, rows = download
    test_rows = fake_ham10000.make_isic2018_test(tmp_path / "isic", layout=layout)
    dataset_dir = _prepare(directory, tmp_path / "tfds", isic2018_test_dir=str(tmp_path / "isic"))

    records = _read_split(tmp_path / "tfds", ham10000.ISIC2018_TEST_SPLIT)
    assert len(records) == len(test_rows) == 7
    for record in records:
        # The label came from the CSV; the stored image has that class's colour.
        colour = fake_ham10000.class_colour(record["label"])
        np.testing.assert_allclose(record["image"][16:48, 16:48].mean(axis=(0, 1)), colour, atol=6)
        # The challenge CSV names no lesions, so each image is its own; Dataverse's names them.
        named = f"HAM_9{record['label']:03d}"
        expected = record["image_id"].decode() if layout == "challenge" else named
        assert record["lesion_id"].decode() == expected
    membership = prepare.read_split_membership(dataset_dir)
    held_out = [r for r in membership if r["split"] == ham10000.ISIC2018_TEST_SPLIT]
    assert len(held_out) == 7 and len(membership) == len(rows) + 7
    assert ham10000.ISIC2018_TEST_SPLIT in (dataset_dir / prepare.STATS_FILE).read_text()
    # `all` is HAM10000's own images; the held-out set stays out of it.
    data = {
        "name": "ham10000",
        "image_size": 64,
        "data_dir": str(tmp_path / "tfds"),
        "split": "all",
    }
    data = load_config("vae.py:smoke", **{f"data.{k}": v for k, v in data.items()}).data
    assert len(sources.get_source(data)) == len(rows)
    # The classifier's evaluator scores it like any split, with the model's class names.
    fields = {"name": "ham10000", "image_size": 64, "data_dir": str(tmp_path / "tfds"),
              "class_names": ",".join(ham10000.CLASS_NAMES), "num_classes": 7,
              "imbalance": False}  # fmt: skip
    vit = load_config("vit.py:smoke", **{f"data.{k}": v for k, v in fields.items()})
    mesh = parallel.make_mesh(1)
    task = tasks.get_task("classify")(vit)
    state = task.init(jax.random.key(0), workdir.example_batch(vit))
    evaluator = classification.ClassificationEvaluator(
        name="isic", config=vit, task=task, mesh=mesh, workdir=tmp_path,
        split=ham10000.ISIC2018_TEST_SPLIT,
    )  # fmt: skip
    result = evaluator.run(state, 0)
    assert result.details["num_examples"] == 7
    assert sorted(evaluator.split.labels) == sorted(r["label"] for r in records)


def test_isic2018_test_set_bad_rows_and_overlap_are_errors(download, tmp_path):
    directory, rows = download
    isic = tmp_path / "isic"
    with pytest.raises(ham10000.DataError, match=r"No ISIC2018_Task3_Test_GroundTruth.csv .*under"):
        ham10000.load_isic2018_test(isic)
    test_rows = fake_ham10000.make_isic2018_test(isic)
    csv_path = isic / ham10000.ISIC2018_TEST_CSV
    (isic / "copy").mkdir()
    (isic / "copy" / "ISIC2018_Task3_Test_GroundTruth.tab").write_text(csv_path.read_text())
    with pytest.raises(ham10000.DataError, match=r"Several .* Keep one"):
        ham10000.load_isic2018_test(isic)
    (isic / "copy" / "ISIC2018_Task3_Test_GroundTruth.tab").unlink()
    text = csv_path.read_text().splitlines()
    text[3] = text[3].replace("0.0", "1.0", 1)  # Row 4 now has two classes.
    csv_path.write_text("\n".join(text) + "\n")
    with pytest.raises(ham10000.DataError, match=r"row 4: 2 of the class columns .* exactly one"):
        ham10000.load_isic2018_test(isic)
    records, problems = ham10000.load_isic2018_test(isic, skip_bad=True)
    assert len(records) == len(test_rows) - 1 and len(problems) == 1

    ham_records, _ = ham10000.load_records(directory)
    with pytest.raises(ham10000.DataError, match="both in HAM10000 and in the held-out"):
        ham10000.check_held_out(ham_records, ham_records[:2])
    assert ham10000.check_held_out(ham_records, records) == set()


def test_asking_for_the_test_set_on_a_dataset_prepared_without_it_fails(download, tmp_path):
    directory, _ = download
    _prepare(directory, tmp_path / "tfds")
    fake_ham10000.make_isic2018_test(tmp_path / "isic")
    with pytest.raises(FileExistsError, match="prepared without isic2018_test"):
        _prepare(directory, tmp_path / "tfds", isic2018_test_dir=str(tmp_path / "isic"))


@pytest.mark.slow
def test_prepare_verb_on_the_command_line(download, tmp_path):
    directory, _ = download
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ham_synth.main",
            "prepare",
            "--source=ham10000",
            f"--manual_dir={directory}",
            f"--data_dir={tmp_path / 'tfds'}",
            "--image_size=64",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "images/lesions per split and class" in proc.stdout
    assert (tmp_path / "tfds" / "ham10000" / "64" / "1.1.0" / prepare.EXAMPLES_FILE).is_file()


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason=f"no real sample at {REAL_SAMPLE}")
def test_prepare_succeeds_on_the_real_sample(tmp_path):
    dataset_dir = _prepare(REAL_SAMPLE, tmp_path / "tfds")
    rows = prepare.read_split_membership(dataset_dir)
    counts = prepare.split_counts(rows)
    # 10 single-image lesions per class: 7/1/2 of each class.
    for split, expected in {"train": 7, "val": 1, "test": 2}.items():
        assert all(n == expected for n, _ in counts[split].values()), (split, counts[split])
    image = _read_split(tmp_path / "tfds", "val")[0]["image"]
    assert image.shape == (64, 64, 3) and image.std() > 5  # A real photo, not a flat fill.
