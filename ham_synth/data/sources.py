"""Random-access data sources: records `{"image": uint8[H, W, 3], "label": int32, "index": int}`.

A source has `len`, `__getitem__` and `class_names`, so grain can shard and shuffle it by index.
`get_source(config.data)` picks one by `data.name`, each in a module of its own: digits
(embedded), ham10000 (prepared by `ham-synth prepare`; ham10000_tfds.py), dermamnist (a MedMNIST
npz), mnist (an mnist.npz) or folder (root/<class_name>/*.png|jpg). `data.classes` and
`data.train_fraction` keep a subset of any source (splits.py).
"""

import dataclasses

import ml_collections
import numpy as np

from ham_synth import lazy
from ham_synth.data import splits


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


# data.name -> "module:function" making the source, imported when used (ham10000 needs TFDS).
_SOURCES = {
    "digits": "ham_synth.data.digits:make_digits",
    "ham10000": "ham_synth.data.ham10000_tfds:make_ham10000",
    "dermamnist": "ham_synth.data.dermamnist:make_dermamnist",
    "mnist": "ham_synth.data.mnist:make_mnist",
    "folder": "ham_synth.data.image_folder:make_folder",
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
    splits.check_split_fractions(data)
    source = lazy.resolve(_SOURCES[data.name])(data)
    if data.classes:
        source = splits.select_classes(source, data.classes, repr(data.name))
    if data.split == "train" and data.train_fraction < 1.0:
        source = splits.train_fraction(source, data.train_fraction, data.split_seed)
    if data.num_classes and len(source.class_names) != data.num_classes:
        raise ValueError(
            f"data.num_classes={data.num_classes} but {data.name!r} has "
            f"{len(source.class_names)} classes {source.class_names}; "
            f"set --config.data.num_classes={len(source.class_names)}, or 0 to take it from the "
            "data."
        )
    return source
