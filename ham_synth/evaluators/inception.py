"""The FID Inception-v3 in flax.linen, equal to pytorch-fid's `InceptionV3(use_fid_inception=True)`,
its converted weights on disk, and batched pool-feature extraction sharded over the mesh.

Module names follow torchvision's (`Mixed_5b/branch1x1/conv`), so weights convert by name.
"""

import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ham_synth import fileio, parallel
from ham_synth import variables as variables_lib

INPUT_SIZE = 299
FEATURE_DIM = 2048
BN_EPSILON = 1e-3  # TensorFlow's Inception; torchvision's BasicConv2d uses the same.
WEIGHTS_FILENAME = "inception_fid_2015-12-05.npz"
CACHE_ENV = "HAM_SYNTH_CACHE_DIR"
CONVERT_COMMAND = "ham-synth convert-inception --download"

MAX_POOL = "max_pool"  # 3x3, stride 2, no padding
GLOBAL_AVG_POOL = "global_avg_pool"
# pytorch-fid's four output blocks, layer by layer, by torchvision layer name; its state dict
# names layers by position here (`blocks.2.0` is Mixed_5b).
BLOCKS = (
    ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", MAX_POOL),
    ("Conv2d_3b_1x1", "Conv2d_4a_3x3", MAX_POOL),
    (
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
    ),
    ("Mixed_7a", "Mixed_7b", "Mixed_7c", GLOBAL_AVG_POOL),
)


# --- The network ---


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        (ph, pw) = self.padding
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


def avg_pool_3x3(x):
    """TensorFlow's 3x3/1 average pool: padded zeros are not counted (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride: int):
    padding = ((1, 1), (1, 1)) if stride == 1 else "VALID"
    return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, max_pool_3x3(x, stride=2)], axis=-1)


class InceptionE(nn.Module):
    """`pool="max"` is pytorch-fid's FIDInceptionE_2 (Mixed_7c): TF's graph max-pools there."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = max_pool_3x3(x, stride=1) if self.pool == "max" else avg_pool_3x3(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def _layers() -> dict[str, nn.Module]:
    """torchvision layer name -> module, with pytorch-fid's FID patches."""
    return {
        "Conv2d_1a_3x3": BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3"),
        "Conv2d_2a_3x3": BasicConv(32, (3, 3), name="Conv2d_2a_3x3"),
        "Conv2d_2b_3x3": BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3"),
        "Conv2d_3b_1x1": BasicConv(80, name="Conv2d_3b_1x1"),
        "Conv2d_4a_3x3": BasicConv(192, (3, 3), name="Conv2d_4a_3x3"),
        "Mixed_5b": InceptionA(32, name="Mixed_5b"),
        "Mixed_5c": InceptionA(64, name="Mixed_5c"),
        "Mixed_5d": InceptionA(64, name="Mixed_5d"),
        "Mixed_6a": InceptionB(name="Mixed_6a"),
        "Mixed_6b": InceptionC(128, name="Mixed_6b"),
        "Mixed_6c": InceptionC(160, name="Mixed_6c"),
        "Mixed_6d": InceptionC(160, name="Mixed_6d"),
        "Mixed_6e": InceptionC(192, name="Mixed_6e"),
        "Mixed_7a": InceptionD(name="Mixed_7a"),
        "Mixed_7b": InceptionE("avg", name="Mixed_7b"),
        "Mixed_7c": InceptionE("max", name="Mixed_7c"),
    }


def resize_to_input(images):
    """uint8 or [0, 1] float images [B, H, W, 3] -> float32[B, 299, 299, 3] in [-1, 1].

    Bilinear without antialiasing, which is torch's interpolate(align_corners=False) that
    pytorch-fid applies; JAX's default antialias=True differs by up to 0.04.
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    b, _, _, c = x.shape
    x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), method="bilinear", antialias=False)
    return 2.0 * x - 1.0


class InceptionV3(nn.Module):
    """uint8 or [0, 1] float images [B, H, W, 3] -> float32[B, 2048] pool features.

    Block outputs (pytorch-fid's output_blocks 0..3) are sown in `intermediates` as
    `block0`..`block3`; apply with `mutable=["intermediates"]` to read them.
    """

    # The network's compute dtype, after a float32 resize: apply it to variables of this dtype
    # (make_feature_fn casts them); the features are float32.
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        x = resize_to_input(images).astype(self.dtype)
        layers = {
            **_layers(),
            MAX_POOL: lambda y: max_pool_3x3(y, stride=2),
            GLOBAL_AVG_POOL: lambda y: jnp.mean(y, axis=(1, 2)),
        }
        for i, block in enumerate(BLOCKS):
            for name in block:
                x = layers[name](x)
            self.sow("intermediates", f"block{i}", x)
        return x.astype(jnp.float32)


# --- Converted weights on disk ---


def default_cache_dir() -> pathlib.Path:
    """$HAM_SYNTH_CACHE_DIR, else ~/.cache/ham_synth."""
    return pathlib.Path(os.environ.get(CACHE_ENV) or "~/.cache/ham_synth").expanduser()


def default_weights_path() -> pathlib.Path:
    return default_cache_dir() / WEIGHTS_FILENAME


def abstract_variables() -> dict:
    """The network's variables as shapes only ({"params", "batch_stats"}), nothing allocated."""
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    return jax.eval_shape(InceptionV3().init, jax.random.key(0), images)


def save_variables(variables: dict, path: str | os.PathLike) -> None:
    """Writes variables as an .npz of float32 arrays keyed by `collection/module/.../name`."""
    flat = traverse_util.flatten_dict(variables, sep="/")
    path = pathlib.Path(path)
    with fileio.atomic_write(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_variables(path: str | os.PathLike | None = None) -> dict:
    """Converted weights from `path` (default: the cache), checked against the network's shapes.

    Loads without pickle. A missing file raises with the command that makes it.
    """
    path = pathlib.Path(path) if path is not None else default_weights_path()
    if not path.exists():
        raise FileNotFoundError(
            f"No converted FID Inception weights at {path}. Make them once with\n"
            f"  {CONVERT_COMMAND}\n"
            "or, offline, from a copy of pytorch-fid's pt_inception-2015-12-05-6726825d.pth:\n"
            "  ham-synth convert-inception --torch_weights=PATH_TO_THAT_PTH"
        )
    arrays = fileio.read_npz(path, fix=f"Make the weights again with\n  {CONVERT_COMMAND}")
    variables = traverse_util.unflatten_dict(arrays, sep="/")
    check_variables(variables, str(path))
    return variables


def check_variables(variables: dict, source: str) -> None:
    """Raises naming `source` unless `variables` has exactly the network's names and shapes."""
    variables_lib.check_same(abstract_variables(), variables, source)


# --- Feature extraction over the mesh ---


def make_feature_fn(
    variables: dict, mesh: Mesh, dtype=jnp.float32
) -> Callable[[jax.Array], jax.Array]:
    """A jitted images [B, H, W, 3] -> float32[B, 2048], batch split over `data`, weights
    replicated and computing in `dtype` (bfloat16 is ~2x faster on GPUs, and its features differ
    from float32's by ~1e-2). B must divide over the mesh (`evaluate` rounds it up to that)."""
    variables = jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)
    variables = jax.device_put(variables, parallel.replicated(mesh))
    apply = jax.jit(
        InceptionV3(dtype=dtype).apply,
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
        out_shardings=parallel.batch_sharded(mesh),
    )
    return lambda images: apply(variables, images)


def extract_features(
    feature_fn: Callable[[jax.Array], jax.Array],
    read_images: Callable[[np.ndarray], np.ndarray],
    num_images: int,
    batch_size: int,
    mesh: Mesh,
) -> np.ndarray:
    """float32[num_images, D]: `feature_fn` of images 0..num_images-1, the same on every process.

    `read_images(indices)` -> [len(indices), H, W, 3] images. Each global batch is assembled on
    the mesh shard by shard, so every process reads only the rows of its own devices; the features
    are gathered back to every process. The last batch is padded by repeating the last image, so
    one shape compiles once.
    """
    if batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} must divide evenly over {mesh.size} devices.")
    if num_images == 0:
        return np.zeros((0, FEATURE_DIM), np.float32)
    example = read_images(np.zeros(1, np.int64))
    shape = (batch_size, *example.shape[1:])
    sharding = parallel.batch_sharded(mesh)
    features, pending = [], None
    for start in range(0, num_images, batch_size):
        indices = np.minimum(np.arange(start, start + batch_size), num_images - 1)
        images = jax.make_array_from_callback(
            shape, sharding, lambda rows, indices=indices: read_images(indices[rows[0]])
        )
        # Gather the previous batch only after dispatching this one, so the devices never idle.
        running = (feature_fn(images), num_images - start)
        if pending is not None:
            features.append(_gather(*pending))
        pending = running
    features.append(_gather(*pending))
    return np.concatenate(features)


def _gather(features: jax.Array, count: int) -> np.ndarray:
    """The first `count` rows of a batch-sharded global array, as numpy on every process."""
    return np.asarray(multihost_utils.process_allgather(features, tiled=True))[:count]
