"""DermaMNIST: MedMNIST's HAM10000 at 28, 64, 128 or 224 px, one npz (`data.path`)."""

import pathlib

import ml_collections
import numpy as np

from ham_synth import fileio
from ham_synth.data import ham10000, imaging, splits
from ham_synth.data.sources import ArraySource


def load_dermamnist(path: str | pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8[N, H, W, 3], int32[N]) of `split` (or all three) from a MedMNIST npz, checked."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No DermaMNIST file at {path!r}; download dermamnist.npz (medmnist.com) and set "
            "--config.data.path to it."
        )
    if split not in splits.SPLITS:
        raise ValueError(f"Unknown split {split!r}; choose one of {splits.SPLITS}.")
    names = ["train", "val", "test"] if split == "all" else [split]
    keys = [f"{s}_{kind}" for s in names for kind in ("images", "labels")]
    fix = (
        "A MedMNIST npz holds train_images, train_labels, val_images, val_labels, test_images "
        "and test_labels; download dermamnist.npz from medmnist.com again and use it unchanged."
    )
    npz = fileio.read_npz(path, keys, fix)
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
        if not np.issubdtype(y.dtype, np.integer):  # 0.5 would be read as 0 silently.
            raise ValueError(f"{path}: {s}_labels are {y.dtype}; DermaMNIST labels are integers.")
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
    images = np.stack([imaging.resize_square(image, data.image_size) for image in images])
    return ArraySource(images, labels, ham10000.CLASS_NAMES)
