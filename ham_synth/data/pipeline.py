"""config.data -> a per-process, seeded, checkpointable grain iterator of host-local batches.

source -> this process's shard -> per-epoch shuffle -> repeat -> transforms -> batch.
The iterator's `get_state()` is saved in every checkpoint, so a resumed run sees the same data.
"""

import grain
import jax
import ml_collections

from ham_synth.data import sources, transforms


def make_dataset(
    source, *, batch_size: int, seed: int, shard_index: int, shard_count: int
) -> grain.IterDataset:
    """Infinite stream of `batch_size` batches from shard `shard_index` of `shard_count`."""
    if len(source) < shard_count * batch_size:
        raise ValueError(
            f"The dataset has {len(source)} records, fewer than one global batch "
            f"({shard_count} processes x {batch_size}); lower train.batch_size."
        )
    return (
        grain.MapDataset.source(source)[shard_index::shard_count]
        .shuffle(seed)  # Reseeded every epoch by `repeat`.
        .repeat()
        .map(transforms.ToModelInputs())
        .batch(batch_size, drop_remainder=True)
        .to_iter_dataset()
    )


def make_train_dataset(
    config: ml_collections.ConfigDict,
) -> tuple[grain.IterDataset, tuple[str, ...]]:
    """This process's training stream and the class names, from config.data and config.train."""
    process_count = jax.process_count()
    if config.train.batch_size % process_count:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must divide evenly over "
            f"{process_count} processes."
        )
    source = sources.get_source(config.data)
    dataset = make_dataset(
        source,
        batch_size=config.train.batch_size // process_count,
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=process_count,
    )
    return dataset, source.class_names
