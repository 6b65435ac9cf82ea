"""The embedded default dataset: scikit-learn's handwritten digits, optionally subsampled to
HAM10000's class shares (`data.imbalance`)."""

import ml_collections
import numpy as np
from PIL import Image
from sklearn import datasets as sk_datasets

from ham_synth.data import ham10000, splits
from ham_synth.data.sources import ArraySource


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
    after balanced val and test are drawn (`splits.imbalanced_split`)."""
    images, labels = load_digits(data.image_size, data.imbalance)
    if data.imbalance:
        keep = splits.imbalanced_split(
            labels,
            data.split,
            val_fraction=splits.split_fraction(data.val_fraction),
            test_fraction=splits.split_fraction(data.test_fraction),
            seed=data.split_seed,
        )
    else:
        keep = splits.split_from_config(labels, data)
    class_names = (
        tuple(f"{d}:{name}" for d, name in enumerate(ham10000.CLASS_NAMES))
        if data.imbalance
        else tuple(str(d) for d in range(10))
    )
    return ArraySource(images[keep], labels[keep], class_names)
