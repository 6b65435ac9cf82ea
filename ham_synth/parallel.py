"""The device mesh, its two shardings, and host-local batch -> global jax.Array.

Data parallelism is jit + shardings: the batch is split over the mesh axis `data`, the train
state is replicated, and XLA inserts the gradient all-reduce.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = -1) -> Mesh:
    """A 1-D mesh over all devices (every host's), or over the first `num_devices`."""
    devices = jax.devices()
    if num_devices > 0:
        if jax.process_count() > 1:
            raise ValueError("train.num_devices must be -1 (all devices) in a multi-host run.")
        if num_devices > len(devices):
            raise ValueError(f"train.num_devices={num_devices} but only {len(devices)} exist.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def every_process(flag: bool) -> bool:
    """Whether `flag` holds on every process. A collective that all processes call, so that each
    takes the same branch when what it found (a file, a readable checkpoint) may differ."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(multihost_utils.process_allgather(np.asarray(flag)).all())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    if global_batch_size % mesh.size:
        raise ValueError(
            f"train.batch_size={global_batch_size} must divide evenly over {mesh.size} devices."
        )


def round_to_devices(batch_size: int, mesh: Mesh) -> int:
    """`batch_size` rounded up to a multiple of the mesh's devices, so a batch splits evenly."""
    if batch_size < 1:  # --batch_size, --fid_batch_size, ...: range() would fail or loop on it.
        raise ValueError(f"A batch size of {batch_size}: use 1 or more.")
    return -(-batch_size // mesh.size) * mesh.size


def to_global_batch(local_batch, mesh: Mesh):
    """Each process's numpy batch -> one global jax.Array per field, sharded over `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
