"""config.data -> a per-process, seeded, checkpointable grain iterator of host-local batches.

source -> this process's shard -> per-epoch shuffle -> repeat (or class-balanced draws) ->
[mixed with synthetic images, data.synthetic] -> augmentation ops -> float conversion -> batch.
The iterator's `get_state()` is saved in every checkpoint, so a resumed run sees the same data.
"""

import os

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from ham_synth import config_lib
from ham_synth.data import sources, synthetic, transforms

# Tags that keep the random streams apart: balanced draws, each augment op, the synthetic
# records' shuffle and the real-or-synthetic choice.
_BALANCE_STREAM = 0
_AUGMENT_STREAM = 1
_SYNTHETIC_STREAM = 2
_MIX_STREAM = 3
_SHUFFLE_STREAM = 4


def derive_seed(seed: int, shard_index: int, stream: int, position: int = 0) -> int:
    """A uint32 seed for one random stage of one process's pipeline (grain takes 0..2**32-1)."""
    entropy = [seed, shard_index, stream, position]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])


def source_labels(source) -> np.ndarray:
    """int32[N]: every record's label; read from `source.labels` when the source holds them,
    else by reading each record (decodes images, once)."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = [source[i]["label"] for i in range(len(source))]
    return np.asarray(labels, np.int32)


def balanced_probabilities(labels: np.ndarray, alpha: float) -> np.ndarray:
    """float64[N]: each record's draw probability, proportional to 1 / class_count**alpha, so a
    class's share is proportional to class_count**(1 - alpha): 0 natural, 1 equal."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -alpha
    return weights / weights.sum()


def stream_shares(
    labels: np.ndarray, num_classes: int, balance_alpha: float, mix: synthetic.Mix | None
) -> tuple[np.ndarray, np.ndarray]:
    """(float64[num_classes] expected share of each class among the training stream's draws,
    float64[num_classes] share of each class's draws that are synthetic): the real draws'
    (shuffled epochs, or `balanced_probabilities`) with `mix`'s synthetic records mixed in."""
    real = np.bincount(labels, balanced_probabilities(labels, balance_alpha), num_classes)
    if mix is None:
        return real, np.zeros(num_classes)
    if mix.within_class:  # The real stream's classes, a share of some drawn synthetic.
        return real, np.where(mix.counts > 0, mix.weight, 0.0)
    fake = mix.weight * mix.counts / mix.counts.sum()
    shares = (1.0 - mix.weight) * real + fake
    return shares, np.divide(fake, shares, out=np.zeros(num_classes), where=shares > 0)


class WeightedDraws(grain.transforms.DatasetSelectionMap):
    """Stream position i -> (0, a record index drawn with `probabilities`), for an endless stream.

    Each draw uses its own counter-based rng, `default_rng((seed, i))`, so the map is stateless:
    any position is drawn alike in any process, order or restart, and grain's iterator state (the
    position) is all a checkpoint needs.
    """

    def __init__(self, probabilities: np.ndarray, seed: int):
        self._cdf = np.cumsum(probabilities)
        self._seed = seed

    def __len__(self) -> int:
        return np.iinfo(np.int64).max

    def __getitem__(self, index: int) -> tuple[int, int]:
        u = np.random.default_rng((self._seed, index)).random() * self._cdf[-1]
        return 0, min(int(np.searchsorted(self._cdf, u, side="right")), len(self._cdf) - 1)


class MixDraws(grain.transforms.DatasetSelectionMap):
    """Stream position i -> (1 with probability `weight` else 0, i): position i of the synthetic
    (1) or the real (0) endless stream. Stateless like WeightedDraws, so the position is all a
    checkpoint needs."""

    def __init__(self, weight: float, seed: int):
        self._weight = weight
        self._seed = seed

    def __len__(self) -> int:
        return np.iinfo(np.int64).max

    def __getitem__(self, index: int) -> tuple[int, int]:
        return int(np.random.default_rng((self._seed, index)).random() < self._weight), index


class ReplaceWithinClass:
    """(stream position, real record index) -> (0, that index), or with probability `rate` when
    the set holds the record's class, (1, a synthetic record of that class drawn uniformly), so
    every class keeps its share of the real stream. Stateless like WeightedDraws."""

    def __init__(self, real_labels, fake_labels, fake_indices, rate: float, seed: int):
        self._real_labels = real_labels
        num_classes = max(int(real_labels.max()), int(fake_labels.max())) + 1
        self._by_class = [fake_indices[fake_labels[fake_indices] == c] for c in range(num_classes)]
        self._rate = rate
        self._seed = seed

    def __call__(self, position: int, index: int) -> tuple[int, int]:
        members = self._by_class[self._real_labels[index]]
        if not len(members):
            return 0, index
        rng = np.random.default_rng((self._seed, position))
        if rng.random() >= self._rate:
            return 0, index
        return 1, int(members[rng.integers(len(members))])


class ReadRecord(grain.transforms.Map):
    """(0, i) -> real record i; (1, j) -> synthetic record j, flagged `synthetic`."""

    def __init__(self, real, fake=None):
        self._real, self._fake = real, fake

    def map(self, pick: tuple[int, int]) -> dict:
        which, index = pick
        if which:
            return {**self._fake[index], "synthetic": True}
        return self._real[index]


def _real_pick(index: int) -> tuple[int, int]:
    return 0, index


def _fake_pick(index: int) -> tuple[int, int]:
    return 1, index


def model_input_size(data: ml_collections.ConfigDict) -> int:
    """The side of the images the model sees: data.image_size after data.eval_preprocess."""
    ops = transforms.parse_ops(data.eval_preprocess, deterministic=True)
    h, w = transforms.output_size(ops, data.image_size)
    if h != w:
        raise ValueError(f"data.eval_preprocess={data.eval_preprocess!r} gives {h}x{w} images.")
    return h


def check_augment_size(data: ml_collections.ConfigDict) -> None:
    """Training (data.augment) and evaluation (data.eval_preprocess) must give the model one
    size; e.g. random_crop(224) in augment goes with center_crop(224) in eval_preprocess."""
    train_size = transforms.output_size(transforms.parse_ops(data.augment), data.image_size)
    size = model_input_size(data)
    if train_size != (size, size):
        raise ValueError(
            f"data.augment={data.augment!r} turns {data.image_size}x{data.image_size} images into "
            f"{train_size[0]}x{train_size[1]}, but evaluation (data.eval_preprocess="
            f"{data.eval_preprocess!r}) gives {size}x{size}; make them agree, e.g. "
            "random_crop(224) in augment with center_crop(224) in eval_preprocess."
        )


class Preprocessed:
    """A source whose images pass through deterministic ops (evaluation preprocessing)."""

    def __init__(self, source, ops):
        self.source, self.ops = source, ops
        self.class_names = source.class_names
        self.labels = source_labels(source)
        self.subgroups = getattr(source, "subgroups", None)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        record = self.source[index]
        return {**record, "image": transforms.apply_ops(self.ops, record["image"])}


def eval_source(data: ml_collections.ConfigDict):
    """The split `data` names, as the classifier evaluates it (data.eval_preprocess applied)."""
    source = sources.get_source(data)
    ops = transforms.parse_ops(data.eval_preprocess, deterministic=True)
    return Preprocessed(source, ops) if ops else source


def make_dataset(
    source,
    *,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
    augment: str = "",
    balance_alpha: float = 0.0,
    mix: synthetic.Mix | None = None,
    read_threads: int = 0,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Infinite stream of `batch_size` batches from shard `shard_index` of `shard_count`.

    `augment`: an op string for `transforms.parse_ops`, applied to the uint8 image.
    `balance_alpha` > 0: draw records with replacement, weight 1 / class_count**alpha with the
    counts of this shard, instead of shuffled epochs.
    `mix`: this shard's synthetic records mixed in (`mix_synthetic`); batches then carry
    `synthetic` True for them.
    `read_threads`: threads assembling batches; 0: `default_read_threads()`.
    `worker_count` > 0: that many processes assemble them, in turn (the same batches).
    """
    ops = transforms.parse_ops(augment)  # Fails on a typo before any data is read.
    if not 0 <= balance_alpha <= 1:
        raise ValueError(f"data.balance_alpha={balance_alpha}; use 0 (off) to 1 (equal shares).")
    if worker_count < 0:
        raise ValueError(f"data.worker_count={worker_count}; use 0 (none) or more processes.")
    if len(source) < shard_count:  # Checked on every process, so that all stop together.
        raise ValueError(
            f"The dataset has {len(source)} records, fewer than the {shard_count} processes, so "
            "some get none; use more data or fewer processes."
        )
    shard_size = len(range(shard_index, len(source), shard_count))
    if shard_size < batch_size:
        # Batching follows `repeat`, so a batch spans epochs; it still works (e.g. on a sample).
        logging.warning(
            "This process's shard has %d records, fewer than a batch of %d: batches repeat "
            "records. Lower train.batch_size to avoid that.",
            shard_size,
            batch_size,
        )
    # Streams of record indices (this process's shard), read after mixing: a synthetic pick
    # never decodes the real record it replaces.
    shard = grain.MapDataset.range(len(source))[shard_index::shard_count]
    if balance_alpha:
        labels = source_labels(source)[shard_index::shard_count]
        draws = WeightedDraws(
            balanced_probabilities(labels, balance_alpha),
            derive_seed(seed, shard_index, _BALANCE_STREAM),
        )
        real = grain.MapDataset.select_from_datasets([shard], draws)
    else:
        # Each process its own permutation (one seed for all moved them in lockstep, reading
        # neighbouring records); reseeded every epoch by `repeat`.
        real = shard.shuffle(derive_seed(seed, shard_index, _SHUFFLE_STREAM)).repeat()
    if mix is None:
        picks = real.map(_real_pick)
    else:
        picks = mix_synthetic(real, source, mix, seed, shard_index, shard_count)
    records = picks.map(ReadRecord(source, mix and mix.source))
    for position, op in enumerate(ops):
        # grain seeds each record's rng from this seed and the stream position.
        records = records.random_map(
            op, seed=derive_seed(seed, shard_index, _AUGMENT_STREAM, position)
        )
    batches = (
        records.map(transforms.ToModelInputs())
        .batch(batch_size, drop_remainder=True)
        .to_iter_dataset(read_options(read_threads or default_read_threads()))
    )
    if worker_count:
        # Two batches ahead per worker: at 224² a batch of floats is tens of megabytes.
        options = grain.MultiprocessingOptions(worker_count, per_worker_buffer_size=2)
        batches = batches.mp_prefetch(options)
    return batches


def read_options(threads: int) -> grain.ReadOptions:
    """`threads` threads and a few batches ahead each: grain's default buffer of 500 batches
    would hold gigabytes of float images at 224²."""
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(8, 2 * threads))


def default_read_threads() -> int:
    """One batch-assembling thread per core beyond the first (the step's), at most 16: the
    Python decoding and augmentation hold the GIL, and on 2 cores grain's default of 16 threads
    made a batch of 64 augmented 16² images take 27 ms against 13 ms with one."""
    return max(1, min(16, (os.cpu_count() or 2) - 1))


def mix_synthetic(
    real: grain.MapDataset,
    source,
    mix: synthetic.Mix,
    seed: int,
    shard_index: int,
    shard_count: int,
) -> grain.MapDataset:
    """The endless stream of real record indices -> (0 real | 1 synthetic, record index) picks,
    with this shard's synthetic records in at `mix.weight`: within the classes they hold
    (`ReplaceWithinClass`), or at any position (`MixDraws`) from shuffled epochs of them."""
    fake_labels = source_labels(mix.source)
    for shard in range(shard_count):  # Every process checks every shard: all stop together.
        held = np.bincount(fake_labels[shard::shard_count], minlength=len(mix.counts))
        lacking = np.flatnonzero((mix.counts > 0) & (held == 0))
        if len(lacking):
            raise ValueError(
                f"{len(mix.source)} synthetic images leave process {shard} of {shard_count} "
                f"none of class(es) {lacking.tolist()}; sample more."
            )
    indices = np.arange(shard_index, len(mix.source), shard_count)
    mix_seed = derive_seed(seed, shard_index, _MIX_STREAM)
    if mix.within_class:
        replace = ReplaceWithinClass(
            source_labels(source), fake_labels, indices, mix.weight, mix_seed
        )
        return real.map_with_index(replace)
    fake = (
        grain.MapDataset.source(indices)
        .shuffle(derive_seed(seed, shard_index, _SYNTHETIC_STREAM))
        .repeat()
    )
    fake = fake.map(_fake_pick)
    if mix.weight == 1.0:
        return fake
    draws = MixDraws(mix.weight, mix_seed)
    return grain.MapDataset.select_from_datasets([real.map(_real_pick), fake], draws)


def make_train_dataset(
    config: ml_collections.ConfigDict,
) -> tuple[grain.IterDataset, ml_collections.ConfigDict]:
    """This process's training stream, from config.data and config.train, and `config` with
    `data.num_classes`, `data.class_names`, `data.class_counts`, `data.class_shares` and
    `data.synthetic_shares` set from the source (the models are sized by the count; sample grids
    name their rows; class weights use the counts, logit adjustment the stream's shares)."""
    process_count = jax.process_count()
    if config.train.batch_size % process_count:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must divide evenly over "
            f"{process_count} processes."
        )
    source = sources.get_source(config.data)
    check_augment_size(config.data)
    labels = source_labels(source)
    balance_alpha = config.data.balance_alpha
    mix = synthetic.make_mix(
        config.data.synthetic, source.class_names, labels, config.data.image_size, balance_alpha
    )
    dataset = make_dataset(
        source,
        batch_size=config.train.batch_size // process_count,
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=process_count,
        augment=config.data.augment,  # Training only.
        balance_alpha=balance_alpha,
        mix=mix,
        read_threads=config.data.read_threads,
        worker_count=config.data.worker_count,
    )
    num_classes = len(source.class_names)
    counts = np.bincount(labels, minlength=num_classes)
    shares, synthetic_shares = stream_shares(labels, num_classes, balance_alpha, mix)
    if mix is not None:
        logging.info(
            "data.synthetic (%s): %d synthetic images %s take %.1f%% of the training stream; "
            "synthetic share per class %s.",
            config.data.synthetic.policy,
            len(mix.source),
            dict(zip(source.class_names, mix.counts.tolist(), strict=True)),
            100 * float(shares @ synthetic_shares),
            dict(zip(source.class_names, np.round(synthetic_shares, 3).tolist(), strict=True)),
        )
    classes = {
        "data.num_classes": num_classes,
        "data.class_names": ",".join(source.class_names),
        "data.class_counts": ",".join(str(int(n)) for n in counts),
        "data.class_shares": ",".join(f"{p:.6g}" for p in shares),
        "data.synthetic_shares": ",".join(f"{p:.6g}" for p in synthetic_shares),
    }
    return dataset, config_lib.with_values(config, classes)
