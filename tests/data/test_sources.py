"""Sources behind `get_source(config.data)`: ham10000 (prepared), dermamnist (npz), folder."""

import fake_ham10000
import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from ham_synth import config_lib, train
from ham_synth.data import ham10000, pipeline, prepare, sources


def _data(**overrides):
    overrides = {f"data.{k}": v for k, v in overrides.items()}
    return load_config("vae.py:smoke", **overrides).data


# --- ham10000 ---


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ham10000")
    fake_ham10000.make_download(root / "download")
    prepare.prepare_ham10000(manual_dir=str(root / "download"), data_dir=str(root / "tfds"))
    return root / "tfds"


def test_ham10000_source_yields_model_records(prepared):
    data = _data(name="ham10000", data_dir=str(prepared), image_size=64, num_classes=7)
    source = sources.get_source(data)
    record = source[2]
    assert record["image"].shape == (64, 64, 3) and record["image"].dtype == np.uint8
    assert record["label"].dtype == np.int32 and record["index"] == 2
    assert record["lesion_id"].startswith("HAM_")
    assert source.class_names == ham10000.CLASS_NAMES
    # Labels come without decoding images, and match the records'.
    np.testing.assert_array_equal(source.labels, [source[i]["label"] for i in range(len(source))])
    total = sum(
        len(sources.get_source(_data(**{**data.to_dict(), "split": s})))
        for s in ("train", "val", "test")
    )
    assert len(sources.get_source(_data(**{**data.to_dict(), "split": "all"}))) == total == 39


def test_ham10000_source_says_how_to_prepare_it(tmp_path):
    data = _data(name="ham10000", data_dir=str(tmp_path), image_size=64, num_classes=7)
    with pytest.raises(FileNotFoundError, match="ham-synth prepare --source=ham10000"):
        sources.get_source(data)
    with pytest.raises(ValueError, match=r"\(64, 128, 256\)"):
        sources.get_source(_data(name="ham10000", data_dir=str(tmp_path), num_classes=7))


@pytest.mark.slow
def test_a_training_config_runs_unchanged_on_ham10000(prepared, tmp_path):
    config = load_config(
        "vae.py:smoke",
        **{
            "data.name": "ham10000",
            "data.data_dir": str(prepared),
            "data.image_size": 64,
            "train.total_steps": 3,
            "train.batch_size": 4,
            "train.num_devices": 1,  # One device compiles fastest; the mesh has its own tests.
        },
    )
    assert config.data.num_classes == 0  # The data says how many classes there are.
    state = train.train_and_evaluate(config, tmp_path)
    assert int(state.step) == 3
    assert (tmp_path / "samples" / "step_0000003.png").is_file()
    saved = config_lib.load_workdir_config(tmp_path)
    assert saved.data.num_classes == len(ham10000.CLASS_NAMES)


# --- dermamnist ---


def _write_npz(path, sizes=None, image_shape=(28, 28, 3), **replace):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (sizes or {"train": 14, "val": 7, "test": 7}).items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 7).reshape(n, 1).astype(np.uint8)
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return arrays


def test_dermamnist_reads_each_split_resized_with_ham10000_label_order(tmp_path):
    arrays = _write_npz(tmp_path / "dermamnist.npz")
    data = _data(name="dermamnist", path=str(tmp_path / "dermamnist.npz"), num_classes=7)
    val = sources.get_source(_data(**{**data.to_dict(), "split": "val", "image_size": 28}))
    np.testing.assert_array_equal(val.images, arrays["val_images"])
    np.testing.assert_array_equal(val.labels, arrays["val_labels"][:, 0])
    assert val.class_names == ham10000.CLASS_NAMES and val.labels.dtype == np.int32
    train = sources.get_source(data)  # image_size 8 in smoke: resized.
    assert train.images.shape == (14, 8, 8, 3) and train[0]["label"] == 0
    assert len(sources.get_source(_data(**{**data.to_dict(), "split": "all"}))) == 28


@pytest.mark.parametrize(
    ("replace", "pattern"),
    [
        ({"val_labels": None}, r"missing key\(s\) \['val_labels'\]"),
        ({"train_images": np.zeros((14, 28, 28, 4), np.uint8)}, r"train_images has shape"),
        ({"train_labels": np.zeros((13, 1), np.uint8)}, r"train_labels has shape \(13, 1\)"),
        ({"train_labels": np.full((14, 1), 9, np.uint8)}, r"range over \[9, 9\]"),
        ({"train_labels": np.full((14, 1), 0.5)}, r"train_labels are float64; .* integers"),
    ],
)
def test_dermamnist_bad_npz_names_the_key_and_the_fix(tmp_path, replace, pattern):
    _write_npz(tmp_path / "bad.npz", **replace)
    data = _data(name="dermamnist", path=str(tmp_path / "bad.npz"), num_classes=7, split="all")
    with pytest.raises(ValueError, match=pattern):
        sources.get_source(data)


@pytest.mark.parametrize("name", ["dermamnist", "mnist"])
def test_a_file_that_is_not_an_npz_is_named_as_such(tmp_path, name):
    path = tmp_path / f"{name}.npz"
    path.write_text("<html>Not Found</html>\n")  # A failed download saved under the name.
    with pytest.raises(ValueError, match=rf"{path} is not an \.npz archive") as raised:
        sources.get_source(_data(name=name, path=str(path), num_classes=7))
    assert "pickle" not in str(raised.value)


def test_an_npz_whose_arrays_do_not_read_is_named_with_the_fix(tmp_path):
    path = tmp_path / "dermamnist.npz"
    _write_npz(path)
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 3] ^= 0xFF  # Inside an array: its checksum no longer matches.
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=rf"{path}: an array does not read .*medmnist\.com"):
        sources.get_source(_data(name="dermamnist", path=str(path), num_classes=7))


def test_dermamnist_missing_file_says_where_to_get_it(tmp_path):
    data = _data(name="dermamnist", path=str(tmp_path / "nope.npz"), num_classes=7)
    with pytest.raises(FileNotFoundError, match="medmnist"):
        sources.get_source(data)


# --- folder ---


def _write_folder(root, counts, size=(12, 10)):
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            colour = (10 * i, 100, 200 if name == "vasc" else 0)
            suffix = ".png" if i % 2 else ".jpg"
            Image.new("RGB", size, colour).save(root / name / f"{i:03d}{suffix}")


def test_folder_labels_follow_sorted_folder_names_and_images_are_resized(tmp_path):
    _write_folder(tmp_path, {"vasc": 3, "akiec": 4, "df": 2})
    source = sources.get_source(
        _data(name="folder", path=str(tmp_path), split="all", num_classes=3)
    )
    assert source.class_names == ("akiec", "df", "vasc") and len(source) == 9
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 0, 1, 1, 2, 2, 2])
    record = source[8]
    assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8
    assert record["label"] == 2 and record["image"][..., 2].mean() > 190


@pytest.mark.parametrize("damage", ["zero_bytes", "truncated", "decompression_bomb"])
def test_a_broken_image_in_a_folder_is_an_error_naming_it_and_the_fix(
    tmp_path, damage, monkeypatch
):
    _write_folder(tmp_path, {"akiec": 2, "df": 2})
    broken = tmp_path / "df" / "001.png"
    if damage == "decompression_bomb":  # PIL refuses more than 2x this many pixels outright.
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        Image.new("RGB", (100, 100)).save(broken)
    else:
        broken.write_bytes(b"" if damage == "zero_bytes" else broken.read_bytes()[:30])
    source = sources.get_source(_data(name="folder", path=str(tmp_path), split="all",
                                      num_classes=2))  # fmt: skip
    assert source[0]["image"].shape == (8, 8, 3)  # The others read.
    with pytest.raises(ham10000.DataError, match=rf"{broken}: cannot decode the image .*; delete "
                       "or replace it"):  # fmt: skip
        source[3]


def test_an_empty_class_folder_is_named_unless_the_classes_are_configured(tmp_path):
    _write_folder(tmp_path, {"akiec": 2, "df": 0})
    data = _data(name="folder", path=str(tmp_path), split="all", num_classes=2)
    with pytest.raises(ValueError, match=r"df holds no .png or .jpg image.*data.class_names"):
        sources.get_source(data)
    named = sources.get_source(_data(**{**data.to_dict(), "class_names": "akiec,df"}))
    np.testing.assert_array_equal(named.labels, [0, 0])  # df: a class with no image here.


def test_folder_follows_the_configured_class_list(tmp_path):
    # A synthetic set for the minority classes only: the label space is still HAM10000's.
    _write_folder(tmp_path, {"df": 2, "vasc": 1})
    data = _data(
        name="folder",
        path=str(tmp_path),
        split="all",
        num_classes=7,
        class_names=",".join(ham10000.CLASS_NAMES),
    )
    source = sources.get_source(data)
    assert source.class_names == ham10000.CLASS_NAMES
    np.testing.assert_array_equal(source.labels, [3, 3, 6])
    with pytest.raises(ValueError, match=r"folders \['vasc'\] that are not in data.class_names"):
        sources.get_source(_data(**{**data.to_dict(), "class_names": "df", "num_classes": 1}))


def test_folder_source_feeds_the_pipeline(tmp_path):
    _write_folder(tmp_path, {"a": 5, "b": 5})
    source = sources.get_source(
        _data(name="folder", path=str(tmp_path), split="all", num_classes=2)
    )
    dataset = pipeline.make_dataset(source, batch_size=4, seed=0, shard_index=0, shard_count=1)
    batch = next(iter(dataset))
    assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
    assert set(batch["label"]) <= {0, 1}


# --- mnist and data.classes ---


def _write_mnist(path, per_class_train=6, per_class_test=2):
    rng = np.random.default_rng(0)

    def part(n):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels  # Each image carries its label in a pixel.
        return images, labels

    (x_train, y_train), (x_test, y_test) = part(per_class_train), part(per_class_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def test_mnist_reads_the_common_npz_with_val_from_train_and_test_as_is(tmp_path):
    path = _write_mnist(tmp_path / "mnist.npz")
    splits = {
        s: sources.get_source(_data(name="mnist", path=str(path), split=s, image_size=28))
        for s in ("train", "val", "test", "all")
    }
    # 10% of each class's 6 train images (at least one) go to val; test is x_test.
    assert [len(splits[s]) for s in ("train", "val", "test", "all")] == [50, 10, 20, 80]
    record = splits["test"][3]
    assert record["image"].shape == (28, 28, 3) and record["image"].dtype == np.uint8
    assert record["image"][0, 0, 0] == record["label"] == 1
    assert splits["all"].class_names == tuple(str(d) for d in range(10))
    with pytest.raises(ValueError, match="data.test_fraction=0.3: 'mnist' has a fixed split"):
        sources.get_source(_data(name="mnist", path=str(path), test_fraction=0.3))
    np.savez(tmp_path / "bad.npz", x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['y_train', 'x_test', 'y_test'\]"):
        sources.get_source(_data(name="mnist", path=str(tmp_path / "bad.npz")))


def test_classes_keeps_a_subset_relabelled_in_the_given_order(tmp_path):
    path = _write_mnist(tmp_path / "mnist.npz")
    subset = sources.get_source(
        _data(name="mnist", path=str(path), split="test", image_size=28, classes="7,2")
    )
    assert subset.class_names == ("7", "2") and len(subset) == 4
    records = [subset[i] for i in range(len(subset))]
    # Labels 0..k-1 in the order named; the pixel still says which digit each image is.
    assert sorted((int(r["label"]), int(r["image"][0, 0, 0])) for r in records) == [
        (0, 7),
        (0, 7),
        (1, 2),
        (1, 2),
    ]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    np.testing.assert_array_equal(subset.labels, [r["label"] for r in records])
    with pytest.raises(ValueError, match=r"unknown \['nv'\]; 'digits' has classes"):
        sources.get_source(_data(classes="7,nv"))
    # Through the pipeline: one class, so the trainer sizes an unconditional model.
    _, config = pipeline.make_train_dataset(load_config("vae.py:smoke", **{"data.classes": "7"}))
    assert (config.data.num_classes, config.data.class_names) == (1, "7")


def test_train_fraction_keeps_a_share_of_each_class_of_train_only():
    def source(split, fraction):
        data = load_config("vit.py:smoke", **{"data.split": split}).data
        data.train_fraction = fraction
        return sources.get_source(data)

    full, quarter = source("train", 1.0), source("train", 0.25)
    full_counts = np.bincount(full.labels)
    assert np.bincount(quarter.labels).tolist() == np.ceil(full_counts * 0.25).astype(int).tolist()
    assert [quarter[i]["label"] for i in range(len(quarter))] == quarter.labels.tolist()
    kept = {full[int(i)]["image"].tobytes() for i in quarter.indices}
    assert kept == {quarter[i]["image"].tobytes() for i in range(len(quarter))}
    assert quarter.indices.tolist() == source("train", 0.25).indices.tolist(), "seeded"
    assert len(source("test", 0.25)) == len(source("test", 1.0))
    with pytest.raises(ValueError, match="train_fraction=0"):
        source("train", 0.0)
