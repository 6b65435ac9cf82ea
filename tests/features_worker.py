"""One process of a 2-process CPU job that extracts features of the digits test split through
`features.source_features` and `features.real_features`; test_evaluate.py runs two, with
JAX_PLATFORMS=cpu and 2 devices each in XLA_FLAGS.

    python tests/features_worker.py PROCESS_ID PORT OUT.npz CACHE_DIR WEIGHTS
"""

import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ham_synth import config_lib, parallel, xla_cpu
from ham_synth.data import sources
from ham_synth.evaluators import features, inception

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


def pixel_features(mesh, weights: pathlib.Path) -> features.FeatureNet:
    """A stand-in for Inception with the same contract and cache key: the flattened pixels, so
    every record's row is distinct and a misplaced row shows."""
    sharded = parallel.batch_sharded(mesh)
    flatten = jax.jit(lambda x: jnp.reshape(x, (len(x), -1)), out_shardings=sharded)
    return features.FeatureNet(features.INCEPTION, flatten, features.inception_cache_key(weights))


def main(process_id: int, port: int, out: str, cache_dir: str, weights: pathlib.Path) -> None:
    xla_cpu.apply()  # As ham-synth does, before JAX's backend starts.
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    os.environ[inception.CACHE_ENV] = cache_dir  # Each process has its own, as hosts would.
    source = RecordingSource(sources.get_source(digits_test_data()))
    mesh = parallel.make_mesh()
    net = pixel_features(mesh, weights)
    extracted, labels = features.source_features(net, source, BATCH_SIZE, mesh)
    real, _, _ = features.real_features(net, digits_test_data(), BATCH_SIZE, mesh)
    np.savez(out, features=extracted, labels=labels, read=np.asarray(source.read), real=real)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], pathlib.Path(sys.argv[5]))
