"""Random-access data sources: records `{"image": uint8[H, W, 3], "label": int32, "index": int}`.

A source has `len`, `__getitem__` and `class_names`, so grain can shard and shuffle it by index.
`get_source(config.data)` picks one by `data.name`: digits (embedded), ham10000 (prepared by
`ham-synth prepare`), dermamnist (a MedMNIST npz), mnist (an mnist.npz) or folder
(root/<class_name>/*.png|jpg); `data.classes` keeps a subset of any source's classes.
"""

import dataclasses
import pathlib
import zipfile

import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets

from ham_synth import config_lib
from ham_synth.data import ham10000, imaging

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


def load_digits(image_size: int, imbalance: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits upscaled (bicubic) to RGB uint8 at `image_size`; with
    `imbalance`, only digits 0..6, which stand for HAM10000's classes in label order."""
    digits = sk_datasets.load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(np.int32)
    if imbalance:
        keep = labels < len(ham10000.CLASS_NAMES)
        gray, labels = gray[keep], labels[keep]
    resized = np.stack(
        [
            np.asarray(Image.fromarray(g).resize((image_size, image_size), Image.BICUBIC))
            for g in gray
        ]
    )
    return np.repeat(resized[..., None], 3, axis=-1), labels


def make_digits(data: ml_collections.ConfigDict) -> ArraySource:
    """The embedded default dataset (ships with scikit-learn), split as `data.split`. With
    `data.imbalance`, train is subsampled to HAM10000's shares (digit 5 plays nv, 3 plays df)
    after balanced val and test are drawn (`imbalanced_split`)."""
    images, labels = load_digits(data.image_size, data.imbalance)
    if data.imbalance:
        keep = imbalanced_split(
            labels,
            data.split,
            val_fraction=split_fraction(data.val_fraction),
            test_fraction=split_fraction(data.test_fraction),
            seed=data.split_seed,
        )
    else:
        keep = split_from_config(labels, data)
    class_names = (
        tuple(f"{d}:{name}" for d, name in enumerate(ham10000.CLASS_NAMES))
        if data.imbalance
        else tuple(str(d) for d in range(10))
    )
    return ArraySource(images[keep], labels[keep], class_names)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3]: center crop to square, antialiased resize."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(ham10000.center_crop_resize(Image.fromarray(image), size))


# --- ham10000: the TFDS dataset that `ham-synth prepare --source=ham10000` builds ---


# Age bands for subgroup metrics (years; the upper bound excluded), as HAM10000 records ages in
# steps of 5.
AGE_BANDS = ((0, 30, "<30"), (30, 45, "30-44"), (45, 60, "45-59"), (60, 75, "60-74"),
             (75, 200, "75+"))  # fmt: skip


def age_band(age: float) -> str:
    if not np.isfinite(age):
        return "unknown"
    return next(name for low, high, name in AGE_BANDS if low <= age < high)


@dataclasses.dataclass(frozen=True)
class Ham10000Source:
    """A prepared split read through `tfds.data_source` (array_record, random access, no TF)."""

    records: object  # tfds ArrayRecordDataSource: decoded dicts with bytes for text fields.
    labels: np.ndarray  # int32[N], read without decoding the images.
    # Per record: sex, age band and body site (the `subgroups` of subgroup metrics).
    subgroups: dict[str, np.ndarray] | None = None
    class_names: tuple[str, ...] = ham10000.CLASS_NAMES

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {
            "image": record["image"],
            "label": np.int32(record["label"]),
            "index": index,
            "image_id": record["image_id"].decode(),
            "lesion_id": record["lesion_id"].decode(),
        }


def make_ham10000(data: ml_collections.ConfigDict) -> Ham10000Source:
    """`ham10000/<data.image_size>` from `data.data_dir` (TFDS's default when empty)."""
    import tensorflow_datasets as tfds  # Imported only when this source is used.

    from ham_synth.data import ham10000_tfds

    if data.image_size not in ham10000_tfds.IMAGE_SIZES:
        raise ValueError(
            f"data.image_size={data.image_size}; HAM10000 is prepared at "
            f"{ham10000_tfds.IMAGE_SIZES}."
        )
    split_by = data.split_by
    if split_by not in ham10000.SPLIT_BY:
        raise ValueError(f"data.split_by={split_by!r}; choose one of {ham10000.SPLIT_BY}.")
    name = ham10000_tfds.config_name(data.image_size, split_by)
    builder = ham10000_tfds.Ham10000(config=name, data_dir=data.data_dir or None)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"No prepared ham10000/{name} in {builder.data_dir}. Run `ham-synth prepare "
            f"--source=ham10000 --manual_dir=DOWNLOAD --data_dir={data.data_dir or 'D'} "
            f"--image_size={data.image_size} --split_by={split_by}` and set "
            "--config.data.data_dir to that data_dir."
        )
    prepared = list(builder.info.splits)
    if data.split not in (*prepared, "all"):
        raise ValueError(f"data.split={data.split!r}; {builder.data_dir} has splits {prepared}.")
    # "all" is HAM10000's own images; the external isic2018_test set stays held out.
    own = [s for s in prepared if s in ham10000.SPLIT_NAMES]
    split = "+".join(own) if data.split == "all" else data.split
    undecoded = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    # One pass over the undecoded records, keeping only their small fields (not the PNG bytes).
    labels, subgroups = [], {"sex": [], "age": [], "localization": []}
    for i in range(len(undecoded)):
        row = undecoded[i]
        labels.append(row["label"])
        subgroups["sex"].append(row["sex"].decode() or "unknown")
        subgroups["age"].append(age_band(float(row["age"])))
        subgroups["localization"].append(row["localization"].decode() or "unknown")
    subgroups = {k: np.asarray(v, dtype=str) for k, v in subgroups.items()}
    return Ham10000Source(builder.as_data_source(split), np.asarray(labels, np.int32), subgroups)


# --- dermamnist: MedMNIST's npz ---


def open_npz(path: pathlib.Path):
    """np.load of an .npz archive, or a ValueError naming the file when it is not one (numpy's
    own message for, say, a text file or an HTML error page talks of pickled data)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{path} is not an .npz archive (a zip of .npy arrays); it may be a partial download "
            "or another file under that name. Download it again, or fix --config.data.path."
        )
    return np.load(path)


def load_dermamnist(path: str | pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[N, H, W, 3], int32[N]) of `split` (or all three) from a MedMNIST npz, checked."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No DermaMNIST file at {path!r}; download dermamnist.npz (medmnist.com) and set "
            "--config.data.path to it."
        )
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {SPLITS}.")
    names = ["train", "val", "test"] if split == "all" else [split]
    with open_npz(path) as npz:
        keys = [f"{s}_{kind}" for s in names for kind in ("images", "labels")]
        missing = [k for k in keys if k not in npz.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; it has {sorted(npz.files)}. A MedMNIST npz "
                "holds train_images, train_labels, val_images, val_labels, test_images and "
                "test_labels; use the dermamnist file from medmnist.com unchanged."
            )
        images, labels = [], []
        for s in names:
            x, y = npz[f"{s}_images"], npz[f"{s}_labels"]
            if x.ndim == 3:  # Grayscale MedMNIST sets store [N, H, W].
                x = np.repeat(x[..., None], 3, axis=-1)
            y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
            if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
                raise ValueError(
                    f"{path}: {s}_images has shape {x.shape} and dtype {x.dtype}; expected uint8 "
                    "[N, H, W, 3] (or [N, H, W])."
                )
            if y.ndim != 1 or len(y) != len(x):
                raise ValueError(
                    f"{path}: {s}_labels has shape {npz[f'{s}_labels'].shape}; expected [N] or "
                    f"[N, 1] with N = {len(x)} (the number of {s}_images)."
                )
            if len(y) and (y.min() < 0 or y.max() >= len(ham10000.CLASS_NAMES)):
                raise ValueError(
                    f"{path}: {s}_labels range over [{y.min()}, {y.max()}]; DermaMNIST labels are "
                    f"0..{len(ham10000.CLASS_NAMES) - 1} ({', '.join(ham10000.CLASS_NAMES)})."
                )
            images.append(x)
            labels.append(y.astype(np.int32))
    return np.concatenate(images), np.concatenate(labels)


def make_dermamnist(data: ml_collections.ConfigDict) -> ArraySource:
    """MedMNIST's DermaMNIST (HAM10000 at 28, 64, 128 or 224 px) from `data.path`, resized to
    `data.image_size` if needed; its labels already follow ham10000.CLASS_NAMES."""
    images, labels = load_dermamnist(data.path, data.split)
    images = np.stack([resize_square(image, data.image_size) for image in images])
    return ArraySource(images, labels, ham10000.CLASS_NAMES)


# --- folder: root/<class_name>/*.png|jpg, e.g. the synthetic sets `ham-synth sample` writes ---

FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """Image files decoded on access, center-cropped and resized to `image_size` if needed."""

    paths: tuple[pathlib.Path, ...]
    labels: np.ndarray  # int32[N]
    class_names: tuple[str, ...]
    image_size: int

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                pixels = np.asarray(imaging.to_rgb(image))
        except (OSError, SyntaxError, ValueError) as error:
            raise ham10000.DataError(
                f"{path}: cannot decode the image ({error}); delete or replace it."
            ) from error
        return {
            "image": resize_square(pixels, self.image_size),
            "label": self.labels[index],
            "index": index,
        }


def folder_like(
    data: ml_collections.ConfigDict, path: str, class_names
) -> ml_collections.ConfigDict:
    """`data` pointed at a folder of images with the same classes (e.g. a synthetic set): every
    image, read at `data.image_size`."""
    folder = ml_collections.ConfigDict(data.to_dict())
    folder.name, folder.path, folder.split = "folder", str(path), "all"
    folder.class_names = ",".join(class_names)
    return folder


def make_folder(data: ml_collections.ConfigDict) -> FolderSource:
    """Every image under `data.path`/<class_name>/; labels follow `data.class_names` (comma
    separated) when given, else the sorted folder names. `data.split` other than `all` takes a
    stratified share as digits does (`data.val_fraction`, `data.test_fraction`)."""
    root = pathlib.Path(data.path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"No folder at data.path={data.path!r}; point it at root/<class_name>/*.png|jpg."
        )
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    class_names = tuple(filter(None, data.class_names.split(","))) or tuple(folders)
    unknown = sorted(set(folders) - set(class_names))
    if unknown:
        raise ValueError(
            f"{root} has folders {unknown} that are not in data.class_names={class_names}; add "
            "them there or move them out."
        )
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in FOLDER_SUFFIXES)
        if not files and not data.class_names:  # A class of its own folder, with no image.
            raise ValueError(
                f"{root / name} holds no .png or .jpg image, so its class would have none; add "
                "images, remove the folder, or name the classes in data.class_names."
            )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"No .png or .jpg images in {root}/<class_name>/.")
    labels = np.asarray(labels, np.int32)
    keep = split_from_config(labels, data)
    return FolderSource(tuple(paths[i] for i in keep), labels[keep], class_names, data.image_size)


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


# --- mnist: the common mnist.npz (x_train, y_train, x_test, y_test) ---

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


def make_mnist(data: ml_collections.ConfigDict) -> ArraySource:
    """MNIST from `data.path`: train and val from x_train (val: data.val_fraction of each class,
    default 0.1), test is x_test; greyscale made RGB and resized to data.image_size."""
    path = pathlib.Path(data.path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No MNIST file at data.path={data.path!r}; point it at an mnist.npz with keys "
            f"{', '.join(MNIST_KEYS)} (e.g. keras.datasets.mnist's)."
        )
    if data.split not in SPLITS:
        raise ValueError(f"Unknown split {data.split!r}; choose one of {SPLITS}.")
    with open_npz(path) as npz:
        missing = [k for k in MNIST_KEYS if k not in npz.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {missing}; it has {sorted(npz.files)}.")
        arrays = {k: npz[k] for k in MNIST_KEYS}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.dtype != np.uint8 or y.shape != (len(x),):
            raise ValueError(
                f"{path}: x_{part} {x.shape} {x.dtype}, y_{part} {y.shape}; expected uint8 "
                "[N, H, W] images and [N] labels 0..9."
            )
    train_labels = arrays["y_train"].astype(np.int32)
    parts = []
    if data.split in ("train", "val", "all"):
        keep = (
            np.arange(len(train_labels))
            if data.split == "all"
            else stratified_split(
                train_labels,
                data.split,
                val_fraction=split_fraction(data.val_fraction),
                test_fraction=0.0,
                seed=data.split_seed,
            )
        )
        parts.append((arrays["x_train"][keep], train_labels[keep]))
    if data.split in ("test", "all"):
        parts.append((arrays["x_test"], arrays["y_test"].astype(np.int32)))
    gray = np.concatenate([x for x, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    images = np.stack(
        [resize_square(np.repeat(g[..., None], 3, -1), data.image_size) for g in gray]
    )
    return ArraySource(images, labels, tuple(str(d) for d in range(10)))


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


_SOURCES = {
    "digits": make_digits,
    "ham10000": make_ham10000,
    "dermamnist": make_dermamnist,
    "mnist": make_mnist,
    "folder": make_folder,
}


def get_source(data: ml_collections.ConfigDict):
    """The source named by `data.name`, checked against `data.num_classes` when that is set."""
    if data.name not in _SOURCES:
        raise ValueError(f"Unknown data.name {data.name!r}; choose one of {sorted(_SOURCES)}.")
    if data.split_by != "lesion" and data.name != "ham10000":
        raise ValueError(
            f"data.split_by={data.split_by!r} applies to sources with lesions (ham10000); "
            f"{data.name!r} has none. Leave it at 'lesion'."
        )
    check_split_fractions(data)
    source = _SOURCES[data.name](data)
    if data.classes:
        source = select_classes(source, data.classes, repr(data.name))
    if data.split == "train" and data.train_fraction < 1.0:
        source = train_fraction(source, data.train_fraction, data.split_seed)
    if data.num_classes and len(source.class_names) != data.num_classes:
        raise ValueError(
            f"data.num_classes={data.num_classes} but {data.name!r} has "
            f"{len(source.class_names)} classes {source.class_names}; "
            f"set --config.data.num_classes={len(source.class_names)}, or 0 to take it from the "
            "data."
        )
    return source
