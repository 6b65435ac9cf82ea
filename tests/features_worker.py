"""One process of a 2-process CPU job that extracts features of the digits test split through
`evaluate.source_features` and `evaluate.real_features`; test_evaluate.py runs two, with
JAX_PLATFORMS=cpu and 2 devices each in XLA_FLAGS.

    python tests/features_worker.py PROCESS_ID PORT OUT.npz CACHE_DIR WEIGHTS
"""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ham_synth import config_lib, evaluate, parallel
from ham_synth.data import sources
from ham_synth.evaluators import inception

BATCH_SIZE = 8  # 2 rows per device; 180 test images leave a padded last batch.


def digits_test_data():
    data = config_lib.get_base_config().data
    data.update({"split": "test", "image_size": 8})
    return data


class RecordingSource:
    """A source that remembers which records this process read."""

    def __init__(self, source):
        self.source, self.read = source, []
        self.labels, self.class_names = source.labels, source.class_names

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.read.append(index)
        return self.source[index]


def pixel_features(mesh):
    """A stand-in for Inception with the same contract: the flattened pixels, so every record's
    row is distinct and a misplaced row shows."""
    sharded = parallel.batch_sharded(mesh)
    flatten = jax.jit(lambda x: jnp.reshape(x, (len(x), -1)), out_shardings=sharded)
    return lambda images: flatten(images)


def main(process_id: int, port: int, out: str, cache_dir: str, weights: pathlib.Path) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    os.environ[inception.CACHE_ENV] = cache_dir  # Each process has its own, as hosts would.
    source = RecordingSource(sources.get_source(digits_test_data()))
    mesh = parallel.make_mesh()
    feature_fn = pixel_features(mesh)
    features, labels = evaluate.source_features(feature_fn, source, BATCH_SIZE, mesh)
    real, _, _ = evaluate.real_features(feature_fn, digits_test_data(), weights, BATCH_SIZE, mesh)
    np.savez(out, features=features, labels=labels, read=np.asarray(source.read), real=real)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], pathlib.Path(sys.argv[5]))
