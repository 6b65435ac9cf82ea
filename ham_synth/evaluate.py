"""`ham-synth evaluate`: FID, KID and precision/recall of a folder of images against a dataset
split, overall and per class; writes WORKDIR/eval/metrics.json and prints a table.

The real set is `config.data` (any source, `--config.data.split=test`); its features are cached.
"""

import hashlib
import json
import pathlib
import warnings

import ml_collections
import numpy as np
from absl import flags, logging

from ham_synth import parallel
from ham_synth.data import sources
from ham_synth.evaluators import fid, inception

OPTIONAL_FLAGS = ("fid_batch_size", "inception_weights")
flags.DEFINE_string(
    "fake_dir", None, "Images to score: FAKE_DIR/<class_name>/*.png|jpg, class names as the data's."
)
flags.DEFINE_integer(
    "fid_batch_size", 64, "Images per Inception batch (rounded up to a multiple of the devices)."
)
flags.DEFINE_string(
    "inception_weights", None, "Converted weights (.npz); default: the ham_synth cache."
)


def source_features(feature_fn, source, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32[N, 2048] pool features, int32[N] labels) of every record of `source`."""
    labels = np.asarray([source[i]["label"] for i in range(len(source))], np.int32)
    batches = (
        np.stack([source[i]["image"] for i in range(start, min(start + batch_size, len(source)))])
        for start in range(0, len(source), batch_size)
    )
    return inception.extract_features(feature_fn, batches, batch_size), labels


def reference_cache_path(data: ml_collections.ConfigDict, weights: pathlib.Path) -> pathlib.Path:
    """Cache file for a real split's features, keyed by the data config and the weights file."""
    stat = weights.stat()
    key = json.dumps([data.to_dict(), str(weights.resolve()), stat.st_size, stat.st_mtime_ns])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return (
        inception.default_cache_dir() / "fid_reference" / f"{data.name}_{data.split}_{digest}.npz"
    )


def real_features(feature_fn, data, weights: pathlib.Path, batch_size: int):
    """The real split's (features, labels, class_names), from the cache when present."""
    path = reference_cache_path(data, weights)
    source = sources.get_source(data)
    if path.exists():
        logging.info("Reference features from %s", path)
        with np.load(path, allow_pickle=False) as cached:
            return cached["features"], cached["labels"], source.class_names
    features, labels = source_features(feature_fn, source, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=features, labels=labels)
    return features, labels, source.class_names


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
    fake_dir: str,
    fid_batch_size: int = 64,
    inception_weights: str | None = None,
) -> dict:
    """The `evaluate` verb: scores `fake_dir` against `config.data`; returns the metrics."""
    weights = pathlib.Path(inception_weights or inception.default_weights_path())
    variables = inception.load_variables(weights)  # says how to convert when missing
    mesh = parallel.make_mesh()
    batch_size = -(-fid_batch_size // mesh.size) * mesh.size
    feature_fn = inception.make_feature_fn(variables, mesh)

    real, real_labels, class_names = real_features(feature_fn, config.data, weights, batch_size)
    fake_source = sources.get_source(fake_data_config(config.data, fake_dir, class_names))
    fake, fake_labels = source_features(feature_fn, fake_source, batch_size)

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
    metrics["fake"] = {"dir": fake_dir}

    out = pathlib.Path(workdir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # Statistics files any pytorch-fid can read (`python -m pytorch_fid a.npz b.npz`).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fid.save_statistics(out / "real_stats.npz", *fid.compute_statistics(real))
        fid.save_statistics(out / "fake_stats.npz", *fid.compute_statistics(fake))
    for message in metrics["warnings"]:
        logging.warning("%s", message)
    print(format_table(metrics))
    print(f"Wrote {out / 'metrics.json'}")
    return metrics
