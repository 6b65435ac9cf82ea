"""A folder of images, root/<class_name>/*.png|jpg: e.g. the synthetic sets `ham-synth sample`
writes."""

import dataclasses
import pathlib

import ml_collections
import numpy as np
from PIL import Image

from ham_synth.data import ham10000, imaging, splits

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
        except imaging.DECODE_ERRORS as error:
            raise ham10000.DataError(
                f"{path}: cannot decode the image ({error}); delete or replace it."
            ) from error
        return {
            "image": imaging.resize_square(pixels, self.image_size),
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
    keep = splits.split_from_config(labels, data)
    return FolderSource(tuple(paths[i] for i in keep), labels[keep], class_names, data.image_size)
