"""Pretrained ViT weights from an AugReg / big_vision `.npz` (keys such as `embedding/kernel`,
`Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`, `cls`, `head/kernel`) onto models/vit.py.

The head is always re-initialized (a new class count). Position embeddings are resampled to the
new patch grid as timm's `resample_abs_pos_embed(..., antialias=False)` does: PyTorch's bicubic
interpolation (a = -0.75, align_corners=False, edge pixels repeated), which `jax.image.resize`
(a = -0.5) does not reproduce. The file is read locally; nothing is downloaded.
"""

import dataclasses
import math
import pathlib

import numpy as np
from flax import traverse_util

from ham_synth import fileio

POS_EMBEDDING = "Transformer/posembed_input/pos_embedding"
HEAD_PREFIX = "head/"
_CUBIC_A = -0.75  # PyTorch's bicubic kernel (Keys' a), also timm's.


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What `load_into` did, for the log line."""

    loaded: int
    reinitialized: list[str]
    missing: list[str]  # In the model, not in the file: kept at their initial values.
    unused: list[str]  # In the file, not in the model.
    resized: str = ""

    def summary(self, path) -> str:
        parts = [f"loaded {self.loaded} arrays from {path}"]
        if self.resized:
            parts.append(f"resized {POS_EMBEDDING} {self.resized}")
        parts.append(f"re-initialized {self.reinitialized}")
        parts.append(f"missing from the file (kept at init): {self.missing or 'none'}")
        parts.append(f"unused from the file: {self.unused or 'none'}")
        return "; ".join(parts) + "."


def read_npz(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The file's arrays by their '/'-joined names; a missing or unreadable file says which."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model.init_from_npz={str(path)!r}: no such file. Download an AugReg checkpoint "
            "(e.g. from gs://vit_models/augreg/) and give its local path."
        )
    return fileio.read_npz(path, fix="Download the checkpoint again (model.init_from_npz).")


def cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] matrix of PyTorch's bicubic resize along one axis (align_corners=False,
    a = -0.75, indices clamped at the edges)."""

    def kernel(x):
        x = np.abs(x)
        near = ((_CUBIC_A + 2) * x - (_CUBIC_A + 3)) * x * x + 1
        far = ((_CUBIC_A * x - 5 * _CUBIC_A) * x + 8 * _CUBIC_A) * x - 4 * _CUBIC_A
        return np.where(x <= 1, near, np.where(x < 2, far, 0.0))

    weights = np.zeros((out_size, in_size))
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    floor = np.floor(source).astype(int)
    for tap in range(-1, 3):
        index = floor + tap
        np.add.at(
            weights,
            (np.arange(out_size), np.clip(index, 0, in_size - 1)),
            kernel(source - index),
        )
    return weights


def resample_pos_embedding(pos: np.ndarray, grid: tuple[int, int], num_prefix: int) -> np.ndarray:
    """pos [1, prefix + h*w, D] -> [1, num_prefix + grid[0]*grid[1], D]: the patch part resized
    bicubically as a square h x h grid; the file's prefix (class) token kept when num_prefix is 1
    and dropped when it is 0."""
    tokens = pos.shape[1]
    side = math.isqrt(tokens)
    file_prefix = tokens - side * side
    if file_prefix not in (0, 1):
        raise ValueError(f"{POS_EMBEDDING} has {tokens} tokens: not a square grid plus 0 or 1.")
    if num_prefix > file_prefix:
        raise ValueError(
            f"The model has a class token but {POS_EMBEDDING} in the file has none; use "
            "model.pool='gap' for this checkpoint."
        )
    prefix, patches = pos[:, :file_prefix], pos[:, file_prefix:]
    patches = patches.reshape(side, side, -1).astype(np.float64)
    rows, cols = cubic_weights(side, grid[0]), cubic_weights(side, grid[1])
    resized = np.einsum("ih,hwd,jw->ijd", rows, patches, cols).reshape(1, -1, pos.shape[-1])
    return np.concatenate([prefix[:, :num_prefix], resized.astype(pos.dtype)], axis=1)


def load_into(params: dict, arrays: dict[str, np.ndarray]) -> tuple[dict, LoadReport]:
    """`params` (a ViT's, e.g. freshly initialized) with every array the file has, the position
    embeddings resampled to this model's grid and the head kept as initialized. A shape mismatch
    elsewhere raises naming the key and both shapes."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out, reinitialized, missing, resized = {}, [], [], ""
    for key, value in flat.items():
        if key.startswith(HEAD_PREFIX):
            out[key] = value
            reinitialized.append(key)
        elif key not in arrays:
            out[key] = value
            missing.append(key)
        elif key == POS_EMBEDDING and arrays[key].shape != value.shape:
            num_prefix = 1 if "cls" in flat else 0
            grid = math.isqrt(value.shape[1] - num_prefix)
            out[key] = resample_pos_embedding(arrays[key], (grid, grid), num_prefix)
            resized = f"{arrays[key].shape} -> {value.shape}"
        elif arrays[key].shape != value.shape:
            raise ValueError(
                f"model.init_from_npz: {key} has shape {arrays[key].shape} in the file but "
                f"{value.shape} in this model; match model.variant / width / patch_size to the "
                "checkpoint."
            )
        else:
            out[key] = np.asarray(arrays[key], value.dtype)
    unused = sorted(set(arrays) - set(flat))
    loaded = len(flat) - len(reinitialized) - len(missing)
    report = LoadReport(loaded, sorted(reinitialized), sorted(missing), unused, resized)
    return traverse_util.unflatten_dict(out, sep="/"), report
