"""Feature spaces for realism metrics, chosen by name, and a dataset split's features (cached).

`inception` is the FID network (converted pytorch-fid weights); only metrics in its space are
called FID and KID. `classifier` is a trained classifier run's pooled representation (the ViT's
pre-logits, EMA params, best checkpoint when the run keeps one): a domain feature space that
needs no download. `pixels` (images average-pooled to a small grid) needs no weights: a cheap,
weak space for tests and sanity checks.
"""

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ham_synth import config_lib, fileio, parallel
from ham_synth import state as state_lib
from ham_synth import workdir as workdir_lib
from ham_synth.data import pipeline, sources
from ham_synth.evaluators import inception
from ham_synth.tasks import base

INCEPTION = "inception"


@dataclasses.dataclass(frozen=True)
class FeatureNet:
    """uint8 images [B, H, W, 3] (B split over the mesh) -> float32[B, D]."""

    name: str
    fn: Callable[[jax.Array], jax.Array]
    # Identifies the network's weights for the reference cache; None: not cached (cheap).
    cache_key: str | None = None

    @property
    def is_inception(self) -> bool:
        """Only Inception features give FID and KID; other spaces report `fd` and `kd`."""
        return self.name == INCEPTION


def make_inception(
    mesh, *, inception_weights: str = "", compute_dtype: str = "float32", **_
) -> FeatureNet:
    """The FID Inception; a missing weights file fails here with the command that converts it."""
    weights = pathlib.Path(inception_weights or inception.default_weights_path())
    variables = inception.load_variables(weights)
    dtype = config_lib.compute_dtype(compute_dtype, "evals.fid.compute_dtype")
    return FeatureNet(
        INCEPTION,
        inception.make_feature_fn(variables, mesh, dtype),
        inception_cache_key(weights, compute_dtype),
    )


def inception_cache_key(weights: pathlib.Path, compute_dtype: str = "float32") -> str:
    """The weights file's identity (path, size and modification time) and, when not float32,
    the compute dtype, whose features differ."""
    stat = weights.stat()
    key = [str(weights.resolve()), stat.st_size, stat.st_mtime_ns]
    return json.dumps(key if compute_dtype == "float32" else [*key, compute_dtype])


def make_pixels(mesh, *, pixel_grid: int = 4, **_) -> FeatureNet:
    """Images in [0, 1] average-pooled to pixel_grid x pixel_grid x 3, flattened."""

    @jax.jit
    def pool(images):
        x = images.astype(jnp.float32) / 255.0
        b, h, w, c = x.shape
        if h % pixel_grid or w % pixel_grid:
            x = jax.image.resize(x, (b, pixel_grid, pixel_grid, c), method="linear")
        else:
            x = x.reshape(b, pixel_grid, h // pixel_grid, pixel_grid, w // pixel_grid, c)
            x = x.mean(axis=(2, 4))
        return x.reshape(b, -1)

    del mesh  # The pooling runs where its input lives.
    return FeatureNet(f"pixels{pixel_grid}", pool)


def make_classifier(mesh, *, classifier_workdir: str = "", **_) -> FeatureNet:
    """A classifier run's features (tasks/classify.py FEATURES) of uint8 images at its input
    size."""
    if not classifier_workdir:
        raise ValueError(
            "The classifier feature space needs classifier_workdir: a `ham-synth train` run of "
            "configs/vit.py."
        )
    config = config_lib.load_workdir_config(classifier_workdir)
    run = workdir_lib.load(classifier_workdir, workdir_lib.default_step(config))
    if run.config.data.eval_preprocess:
        raise ValueError(
            f"{classifier_workdir} evaluates through data.eval_preprocess="
            f"{run.config.data.eval_preprocess!r}; its feature space takes images at the model's "
            "input size, so use a classifier trained without it."
        )
    predict = base.get_predict_fn(run.task, base.FEATURES, run.config.task)
    variables = jax.device_put(state_lib.eval_variables(run.state), parallel.replicated(mesh))
    fn = jax.jit(
        lambda images: predict(variables, images.astype(jnp.float32) / 127.5 - 1),
        out_shardings=parallel.batch_sharded(mesh),
    )
    # Not cached: a retrained run in the same folder would hit a stale cache entry.
    return FeatureNet(f"classifier (step {run.step} of {classifier_workdir})", fn)


_FEATURE_NETS = {INCEPTION: make_inception, "classifier": make_classifier, "pixels": make_pixels}


def get_feature_net(name: str, mesh, **options) -> FeatureNet:
    if name not in _FEATURE_NETS:
        raise ValueError(
            f"Unknown feature network {name!r}; choose one of {sorted(_FEATURE_NETS)}."
        )
    return _FEATURE_NETS[name](mesh, **options)


def image_features(net: FeatureNet, images: np.ndarray, batch_size: int, mesh) -> np.ndarray:
    """float32[N, D] features of uint8 images [N, H, W, 3] held on every process."""
    return inception.extract_features(
        net.fn, lambda indices: images[indices], len(images), batch_size, mesh
    )


def source_features(net: FeatureNet, source, batch_size: int, mesh):
    """(float32[N, D] features, int32[N] labels) of every record of `source`; each process
    decodes only its share of the images."""

    def read_images(indices):
        return np.stack([source[int(i)]["image"] for i in indices])

    features = inception.extract_features(net.fn, read_images, len(source), batch_size, mesh)
    return features, pipeline.source_labels(source)


def content_digest(source, samples: int = 16) -> str:
    """A digest of a source's labels and `samples` evenly spaced images: it changes when the
    data behind one config changes (a file replaced at its path, a split prepared again)."""
    digest = hashlib.sha256(np.asarray(pipeline.source_labels(source), np.int64).tobytes())
    for i in np.linspace(0, len(source) - 1, min(samples, len(source))).astype(int):
        digest.update(np.ascontiguousarray(source[int(i)]["image"]).tobytes())
    return digest.hexdigest()[:16]


def reference_cache_path(data: ml_collections.ConfigDict, net: FeatureNet, source) -> pathlib.Path:
    """Cache file for a real split's features, keyed by the data config, what the source holds
    (`content_digest`) and the network."""
    key = json.dumps([data.to_dict(), content_digest(source), net.name, net.cache_key])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (
        inception.default_cache_dir() / "fid_reference" / f"{data.name}_{data.split}_{digest}.npz"
    )


def real_features(net: FeatureNet, data: ml_collections.ConfigDict, batch_size: int, mesh):
    """The split `data` names: (features, labels, class_names), from the cache when present."""
    source = sources.get_source(data)
    if net.cache_key is None:
        return (*source_features(net, source, batch_size, mesh), source.class_names)
    path = reference_cache_path(data, net, source)
    # Extraction is collective: all processes read the cache, or none does.
    if parallel.every_process(path.exists()):
        logging.info("Reference features from %s", path)
        with np.load(path, allow_pickle=False) as cached:
            return cached["features"], cached["labels"], source.class_names
    features, labels = source_features(net, source, batch_size, mesh)
    if jax.process_index() == 0:
        with fileio.atomic_write(path, "wb") as f:
            np.savez(f, features=features, labels=labels)
    return features, labels, source.class_names
