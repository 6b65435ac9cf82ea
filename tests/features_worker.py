"""One process of a 2-process CPU job (2 devices each) that extracts features of the digits test
split through `evaluate.source_features`; run by test_evaluate.py, not by pytest.

    python tests/features_worker.py PROCESS_ID PORT OUT.npz
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ham_synth import config_lib, evaluate, parallel  # noqa: E402
from ham_synth.data import sources  # noqa: E402

BATCH_SIZE = 8  # 2 rows per device; 180 test images leave a padded last batch.


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


def main(process_id: int, port: int, out: str) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    data = config_lib.get_base_config().data
    data.update({"split": "test", "image_size": 8})
    source = RecordingSource(sources.get_source(data))
    mesh = parallel.make_mesh()
    features, labels = evaluate.source_features(pixel_features(mesh), source, BATCH_SIZE, mesh)
    np.savez(out, features=features, labels=labels, read=np.asarray(source.read))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
