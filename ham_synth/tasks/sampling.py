"""The sharded sampling loop: a generator's `sample` predict function over any number of labels.

`sample` (the command), the `samples` grid and the `fid` evaluator all draw images through it, so
it sits with the Task contract rather than with any of them.
"""

from collections.abc import Callable, Iterator

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from ham_synth import parallel
from ham_synth import state as state_lib
from ham_synth.tasks import base


def generate(
    sample_fn,
    variables,
    labels: np.ndarray,
    rng: jax.Array,
    *,
    batch_size: int,
    mesh,
    settings: dict | None = None,
    progress: bool = False,
    on_disk: Callable[[int, int], np.ndarray | None] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (first index, float32[n, H, W, C] images in [-1, 1]) for `labels` in order, on every
    process. Batches are split over the mesh and padded to one shape, so sampling compiles once;
    batch i draws its noise from fold_in(rng, i). `on_disk(start, stop)` may return a batch's
    images from an earlier, unfinished run instead (the same on every process)."""
    jitted = base.jit_predict(sample_fn, mesh)
    batch = parallel.round_to_devices(min(batch_size, len(labels)), mesh)
    starts = range(0, len(labels), batch)
    for i, start in enumerate(tqdm.tqdm(starts, desc="sample", unit="batch", disable=not progress)):
        chunk = labels[start : start + batch]
        # Kept only where every process found it: the others would draw it collectively.
        kept = on_disk(start, start + len(chunk)) if on_disk is not None else None
        if on_disk is not None and parallel.every_process(kept is not None):
            yield start, kept
            continue
        padded = np.pad(chunk, (0, batch - len(chunk)), mode="edge")
        sharded = jax.device_put(padded, parallel.batch_sharded(mesh))
        images = jitted(variables, sharded, jax.random.fold_in(rng, i), **(settings or {}))
        yield start, np.asarray(multihost_utils.process_allgather(images, tiled=True))[: len(chunk)]


def generate_all(sample_fn, state, labels: np.ndarray, rng, *, batch_size: int, mesh) -> np.ndarray:
    """float32[N, H, W, C]: `generate` from a train state's EMA params, concatenated."""
    variables = state_lib.eval_variables(state)
    chunks = generate(sample_fn, variables, labels, rng, batch_size=batch_size, mesh=mesh)
    return np.concatenate([images for _, images in chunks])
