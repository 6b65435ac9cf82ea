"""`ham-synth convert-inception`: pytorch-fid's FID Inception weights (.pth) -> our .npz.

torch is needed here only (`pip install -e ".[convert]"`); everything else reads the .npz.
"""

import hashlib
import os
import pathlib
import urllib.request
from collections.abc import Mapping

import numpy as np
from absl import logging
from flax import traverse_util

from ham_synth.evaluators import inception

# pytorch_fid/inception.py: FID_WEIGHTS_URL. The name's suffix is its sha256 prefix.
TORCH_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
TORCH_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + TORCH_WEIGHTS_FILENAME
)
TORCH_WEIGHTS_SHA256_PREFIX = "6726825d"

# torch parameter name -> (flax collection, flax name) inside each conv+BN unit.
_RENAMES = {
    "conv.weight": ("params", "kernel"),
    "bn.weight": ("params", "scale"),
    "bn.bias": ("params", "bias"),
    "bn.running_mean": ("batch_stats", "mean"),
    "bn.running_var": ("batch_stats", "var"),
}


def layer_path(torch_key: str) -> list[str]:
    """Module path of a torch key, with pytorch-fid's `blocks.I.J` replaced by torchvision's
    layer name: `blocks.2.0.branch1x1.bn.bias` -> ["Mixed_5b", "branch1x1"]."""
    parts = torch_key.split(".")[:-2]
    if parts[0] == "blocks":
        parts = [inception.BLOCKS[int(parts[1])][int(parts[2])], *parts[3:]]
    return parts


def torch_to_flax(state_dict: Mapping[str, np.ndarray]) -> dict:
    """A pytorch-fid (or torchvision-named) Inception state dict -> our {"params", "batch_stats"}.

    Accepts the published file's keys (`Mixed_5b.branch1x1.conv.weight`) and pytorch-fid
    `InceptionV3`'s (`blocks.2.0.branch1x1.conv.weight`). The classifier (`fc`) and
    `num_batches_tracked` are dropped. Conv kernels go from OIHW to HWIO.
    """
    flat = {}
    for key, value in state_dict.items():
        suffix = ".".join(key.split(".")[-2:])
        if suffix not in _RENAMES or key.startswith(("fc.", "AuxLogits.")):
            continue
        collection, name = _RENAMES[suffix]
        value = np.asarray(value, np.float32)
        if name == "kernel":
            value = value.transpose(2, 3, 1, 0)
        module = "conv" if suffix.startswith("conv") else "bn"
        flat[(collection, *layer_path(key), module, name)] = value
    variables = traverse_util.unflatten_dict(flat)
    inception.check_variables(variables, "the torch state dict")
    return variables


def read_torch_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A .pth state dict as numpy arrays, loaded with weights_only=True (no arbitrary pickle)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            'Converting the weights needs torch: pip install -e ".[convert]" (a CPU build will do).'
        ) from e
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.numpy() for k, v in state_dict.items()}


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(dest: pathlib.Path, url: str = TORCH_WEIGHTS_URL) -> pathlib.Path:
    """Fetches pytorch-fid's weights to `dest` and checks the sha256 prefix in their name."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    logging.info("Downloading %s", url)
    urllib.request.urlretrieve(url, tmp)
    digest = sha256_of(tmp)
    if not digest.startswith(TORCH_WEIGHTS_SHA256_PREFIX):
        tmp.unlink()
        raise ValueError(f"{url} has sha256 {digest}, expected {TORCH_WEIGHTS_SHA256_PREFIX}...")
    tmp.replace(dest)
    return dest


def convert(torch_weights: str | os.PathLike, out: str | os.PathLike) -> pathlib.Path:
    """Reads the .pth, converts, checks the shapes and writes the .npz; returns its path."""
    variables = torch_to_flax(read_torch_weights(torch_weights))
    inception.save_variables(variables, out)
    return pathlib.Path(out)


def run(
    torch_weights: str | None = None, download: bool = False, cache_dir: str | None = None
) -> pathlib.Path:
    """The `convert-inception` verb: [download,] convert, and write to the cache dir."""
    cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else inception.default_cache_dir()
    torch_weights = pathlib.Path(torch_weights or cache_dir / TORCH_WEIGHTS_FILENAME).expanduser()
    if download:
        fetch(torch_weights)
    if not torch_weights.exists():
        raise FileNotFoundError(
            f"{torch_weights} not found: pass --download (needs internet), or fetch\n  "
            f"{TORCH_WEIGHTS_URL}\nand pass --torch_weights=PATH."
        )
    out = convert(torch_weights, cache_dir / inception.WEIGHTS_FILENAME)
    logging.info("Wrote the FID Inception weights to %s", out)
    print(f"Wrote {out}")
    return out
