"""`ham-synth evaluate`: FID, KID and precision/recall of generated images against a dataset split,
overall and per class; writes WORKDIR/eval/metrics.json and prints a table.

The real set is `config.data` (any source, `--config.data.split=test`); its features are cached.
The fake set is a folder of images (`--fake_dir`), or a generator's workdir to sample from first
(`--generator_workdir --num_per_class`, into WORKDIR/eval/synthetic).
"""

import hashlib
import json
import pathlib
import warnings

import jax
import ml_collections
import numpy as np
from absl import flags, logging
from jax.experimental import multihost_utils

from ham_synth import parallel, synthesize
from ham_synth.data import pipeline, sources
from ham_synth.evaluators import fid, inception

# Sampling flags (defined by `sample`) that evaluate forwards to synthesize.run.
SAMPLE_FLAGS = ("sampler", "steps", "guidance", "seed", "sample_batch_size")
OPTIONAL_FLAGS = (
    "fake_dir",
    "generator_workdir",
    "num_per_class",
    *SAMPLE_FLAGS,
    "fid_batch_size",
    "inception_weights",
)
flags.DEFINE_string(
    "fake_dir", None, "Images to score: FAKE_DIR/<class_name>/*.png|jpg, class names as the data's."
)
flags.DEFINE_string(
    "generator_workdir",
    None,
    "Instead of --fake_dir: a `ham-synth train` workdir to sample --num_per_class images per class "
    "from (into WORKDIR/eval/synthetic) and score.",
)
flags.DEFINE_integer(
    "fid_batch_size", 64, "Images per Inception batch (rounded up to a multiple of the devices)."
)
flags.DEFINE_string(
    "inception_weights", None, "Converted weights (.npz); default: the ham_synth cache."
)


def source_features(feature_fn, source, batch_size: int, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(float32[N, 2048] pool features, int32[N] labels) of every record of `source`; each
    process decodes only its share of the images."""

    def read_images(indices):
        return np.stack([source[int(i)]["image"] for i in indices])

    features = inception.extract_features(feature_fn, read_images, len(source), batch_size, mesh)
    return features, pipeline.source_labels(source)


def reference_cache_path(data: ml_collections.ConfigDict, weights: pathlib.Path) -> pathlib.Path:
    """Cache file for a real split's features, keyed by the data config and the weights file."""
    stat = weights.stat()
    key = json.dumps([data.to_dict(), str(weights.resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (
        inception.default_cache_dir() / "fid_reference" / f"{data.name}_{data.split}_{digest}.npz"
    )


def real_features(feature_fn, data, weights: pathlib.Path, batch_size: int, mesh):
    """The real split's (features, labels, class_names), from the cache when present."""
    path = reference_cache_path(data, weights)
    source = sources.get_source(data)
    use_cache = path.exists()
    if jax.process_count() > 1:  # Extraction is collective: all read the cache, or none does.
        use_cache = bool(multihost_utils.process_allgather(np.asarray(use_cache)).all())
    if use_cache:
        logging.info("Reference features from %s", path)
        with np.load(path, allow_pickle=False) as cached:
            return cached["features"], cached["labels"], source.class_names
    features, labels = source_features(feature_fn, source, batch_size, mesh)
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, features=features, labels=labels)
        tmp.replace(path)  # Never a half-written cache, even if killed here.
    return features, labels, source.class_names


def sample_fake_dir(generator_workdir: str, num_per_class, out: pathlib.Path, **options) -> str:
    """Samples `num_per_class` images per class from a generator workdir into `out`."""
    if not num_per_class:
        raise ValueError("--generator_workdir needs --num_per_class: how many images per class.")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already holds samples: score them with --fake_dir={out}, or move the folder "
            "away (or use another --workdir) to sample again."
        )
    return str(synthesize.run(generator_workdir, num_per_class, out_dir=str(out), **options))


def fake_data_config(data: ml_collections.ConfigDict, fake_dir: str, class_names):
    """The real data config pointed at a folder of generated images with the same classes."""
    fake = ml_collections.ConfigDict(data.to_dict())
    fake.name, fake.path, fake.split = "folder", fake_dir, "all"
    fake.class_names = ",".join(class_names)
    return fake


def format_table(metrics: dict) -> str:
    columns = ("n_real", "n_fake", "fid", "kid", "precision", "recall")
    rows = [("overall", metrics["overall"]), *metrics["per_class"].items()]
    lines = [f"{'':12s}" + "".join(f"{c:>11s}" for c in columns)]
    for name, row in rows:
        cells = "".join(
            f"{row[c]:>11d}" if isinstance(row[c], int) else f"{row[c]:>11.4f}" for c in columns
        )
        lines.append(f"{name:12s}{cells}")
    return "\n".join(lines)


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    fake_dir: str | None = None,
    generator_workdir: str | None = None,
    num_per_class: int | None = None,
    fid_batch_size: int = 64,
    inception_weights: str | None = None,
    **sample_options,
) -> dict:
    """The `evaluate` verb: scores `fake_dir`, or samples from `generator_workdir` and scores
    that, against `config.data`; returns the metrics. `sample_options` go to synthesize.run."""
    if (fake_dir is None) == (generator_workdir is None):
        raise ValueError(
            "Pass one of --fake_dir (a folder of images) or --generator_workdir (a trained "
            "generator to sample from)."
        )
    sampler_flags = [f"--{k}" for k in ("sampler", "steps", "guidance") if sample_options.get(k)]
    if fake_dir and sampler_flags:
        raise ValueError(f"{', '.join(sampler_flags)} only apply with --generator_workdir.")
    weights = pathlib.Path(inception_weights or inception.default_weights_path())
    variables = inception.load_variables(weights)  # says how to convert when missing
    out = pathlib.Path(workdir) / "eval"
    if generator_workdir:
        fake_dir = sample_fake_dir(
            generator_workdir, num_per_class, out / "synthetic", **sample_options
        )
    mesh = parallel.make_mesh()
    batch_size = -(-fid_batch_size // mesh.size) * mesh.size
    feature_fn = inception.make_feature_fn(variables, mesh)

    real, real_labels, class_names = real_features(
        feature_fn, config.data, weights, batch_size, mesh
    )
    fake_source = sources.get_source(fake_data_config(config.data, fake_dir, class_names))
    fake, fake_labels = source_features(feature_fn, fake_source, batch_size, mesh)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = {
            "overall": fid.compute_metrics(real, fake, seed=config.seed),
            "per_class": fid.per_class_metrics(
                real, real_labels, fake, fake_labels, class_names, seed=config.seed
            ),
        }
    metrics["warnings"] = sorted({str(w.message) for w in caught})
    metrics["real"] = {"data": config.data.to_dict()}
    metrics["fake"] = {"dir": fake_dir, "generator_workdir": generator_workdir}
    if generator_workdir:
        metrics["fake"]["sampling"] = {"num_per_class": num_per_class, **sample_options}
    if jax.process_index() == 0:
        write_outputs(out, metrics, real, fake)
    return metrics


def write_outputs(out: pathlib.Path, metrics: dict, real: np.ndarray, fake: np.ndarray) -> None:
    """metrics.json, both sides' FID statistics (which pytorch-fid reads), and a printed table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # The small-sample warning is already in metrics.
        fid.save_statistics(out / "real_stats.npz", *fid.compute_statistics(real))
        fid.save_statistics(out / "fake_stats.npz", *fid.compute_statistics(fake))
    for message in metrics["warnings"]:
        logging.warning("%s", message)
    print(format_table(metrics))
    print(f"Wrote {out / 'metrics.json'}")
