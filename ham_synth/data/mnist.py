"""MNIST from the common mnist.npz (x_train, y_train, x_test, y_test) at `data.path`."""

import pathlib

import ml_collections
import numpy as np

from ham_synth import fileio
from ham_synth.data import imaging, splits
from ham_synth.data.sources import ArraySource

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
    if data.split not in splits.SPLITS:
        raise ValueError(f"Unknown split {data.split!r}; choose one of {splits.SPLITS}.")
    arrays = fileio.read_npz(path, MNIST_KEYS, "Point data.path at keras.datasets.mnist's file.")
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
            else splits.stratified_split(
                train_labels,
                data.split,
                val_fraction=splits.split_fraction(data.val_fraction),
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
        [imaging.resize_square(np.repeat(g[..., None], 3, -1), data.image_size) for g in gray]
    )
    return ArraySource(images, labels, tuple(str(d) for d in range(10)))
