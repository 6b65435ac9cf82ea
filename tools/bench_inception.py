"""Inception pool-feature throughput (images/s): our JAX network sharded over the mesh vs
pytorch-fid's, on the same random weights, images, batch size and machine.

    python tools/bench_inception.py --batch_size=32 --batches=4 --out=bench_inception.json

Needs the test extra (torch, pytorch-fid). pytorch-fid is built offline by the tests' helper,
tests/evaluators/torch_reference.py. Both time full batches of uint8 images converted to [0, 1]
and resized to 299 inside the network, after a warm-up batch (JAX: after compiling).
"""

import datetime
import json
import pathlib
import platform
import sys
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from ham_synth import parallel
from ham_synth.evaluators import convert_inception, inception

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "evaluators"))
import torch_reference as tr  # noqa: E402

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per batch, for both frameworks.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Timed batches, after one warm-up batch.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input height and width (resized to 299).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", -1, "JAX mesh size; -1 uses every device.")
_OUT = flags.DEFINE_string("out", "bench_inception.json", "Where the JSON results go.")


def time_batches(run_batch, batches: list[np.ndarray]) -> tuple[float, float]:
    """(first-call seconds, steady images/s) of `run_batch`, which must block on its result."""
    start = time.perf_counter()
    run_batch(batches[0])
    first = time.perf_counter() - start
    start = time.perf_counter()
    for batch in batches[1:]:
        run_batch(batch)
    elapsed = time.perf_counter() - start
    return first, sum(len(b) for b in batches[1:]) / elapsed


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    rng = np.random.default_rng(0)
    shape = (_BATCH_SIZE.value, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3)
    batches = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(_BATCHES.value + 1)]

    with tempfile.TemporaryDirectory() as tmp:
        pth = pathlib.Path(tmp) / convert_inception.TORCH_WEIGHTS_FILENAME
        tr.write_random_fid_weights(pth, seed=0)
        torch_model = tr.load_fid_inception(pth)
        variables = convert_inception.torch_to_flax(convert_inception.read_torch_weights(pth))

    mesh = parallel.make_mesh(_NUM_DEVICES.value)
    feature_fn = inception.make_feature_fn(variables, mesh)
    jax_first, jax_rate = time_batches(lambda b: feature_fn(b).block_until_ready(), batches)

    def torch_batch(batch):
        return tr.run_blocks(torch_model, batch.astype(np.float32) / 255.0)

    torch_first, torch_rate = time_batches(torch_batch, batches)

    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {jax.default_backend()}",
        "jax": jax.__version__,
        "torch": tr.torch.__version__,
        "torch_threads": tr.torch.get_num_threads(),
        "mesh_devices": mesh.size,
        "batch_size": _BATCH_SIZE.value,
        "image_size": _IMAGE_SIZE.value,
        "timed_batches": _BATCHES.value,
        "jax_first_batch_s": jax_first,
        "jax_images_per_s": jax_rate,
        "torch_first_batch_s": torch_first,
        "torch_images_per_s": torch_rate,
    }
    pathlib.Path(_OUT.value).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(
        "| framework | batch | images/s | first batch |\n|---|---|---|---|\n"
        f"| JAX ({mesh.size} device(s)) | {shape[0]} | {jax_rate:.1f} | {jax_first:.1f} s |\n"
        f"| pytorch-fid | {shape[0]} | {torch_rate:.1f} | {torch_first:.1f} s |"
    )


if __name__ == "__main__":
    app.run(main)
