"""digits: upscaling, splits, the imbalance option and the grain pipeline's order, shards,
augmentation and class-balanced sampling."""

import itertools

import grain
import numpy as np
import pytest
from conftest import load_config

from ham_synth.data import ham10000, pipeline, sources, splits, synthetic, transforms

ALL_OPS = "flip_lr|flip_ud|rotate(30)|zoom(0.8,1.25)|color_jitter(0.3,0.3,0.3)"


def _data(**overrides):
    overrides = {f"data.{k}": v for k, v in overrides.items()}
    return load_config("vae.py:quickstart", **overrides).data


def _indices(dataset, num_batches):
    return np.concatenate([b["index"] for b in itertools.islice(iter(dataset), num_batches)])


def test_digits_records_are_rgb_uint8_at_the_configured_size():
    source = sources.get_source(_data(image_size=16, split="all"))
    record = source[0]
    assert len(source) == 1797
    assert record["image"].shape == (16, 16, 3) and record["image"].dtype == np.uint8
    assert record["image"].max() > 200 and record["image"].min() == 0
    np.testing.assert_array_equal(record["image"][..., 0], record["image"][..., 2])


def test_splits_are_disjoint_stratified_and_deterministic():
    by_split = {s: sources.get_source(_data(split=s)) for s in ("train", "val", "test")}
    sizes = {s: len(src) for s, src in by_split.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["val"] - 180) <= 1 and abs(sizes["test"] - 180) <= 1
    keys = {
        s: {src.images[i].tobytes() + bytes([src.labels[i]]) for i in range(len(src))}
        for s, src in by_split.items()
    }
    # Digits holds a few exact duplicate images, so allow a handful of cross-split repeats.
    assert len(keys["train"] & keys["test"]) <= 3
    for src in by_split.values():
        shares = np.bincount(src.labels, minlength=10) / len(src)
        np.testing.assert_allclose(shares, 0.1, atol=0.02)
    again = sources.get_source(_data(split="val"))
    np.testing.assert_array_equal(again.labels, by_split["val"].labels)


def test_imbalance_subsamples_train_to_ham10000_shares_after_balanced_val_and_test():
    by_split = {
        split: sources.get_source(_data(split=split, imbalance=True, num_classes=7))
        for split in ("train", "val", "test", "all")
    }
    assert by_split["train"].class_names[5] == "5:nv" and len(by_split["train"].class_names) == 7
    counts = np.bincount(by_split["train"].labels, minlength=7)
    # Each train count is the share rounded to a whole image.
    np.testing.assert_allclose(
        counts / counts.sum(), ham10000.CLASS_SHARES, atol=1.0 / counts.sum()
    )
    assert counts[5] == counts.max() and counts[3] == counts.min() >= 1
    for split in ("val", "test"):  # Curated: balanced, at least 15 of every class.
        eval_counts = np.bincount(by_split[split].labels, minlength=7)
        assert eval_counts.min() >= splits.MIN_EVAL_PER_CLASS, split
        assert eval_counts.max() - eval_counts.min() <= 2, split
    keys = {
        split: {src.images[i].tobytes() for i in range(len(src))} for split, src in by_split.items()
    }
    assert len(keys["train"] & keys["test"]) <= 3  # Digits holds a few exact duplicates.
    assert len(by_split["all"]) == sum(len(by_split[s]) for s in ("train", "val", "test"))
    assert keys["all"] == keys["train"] | keys["val"] | keys["test"]


def test_num_classes_comes_from_the_data_or_a_mismatch_says_how_to_fix_it():
    config = load_config("vae.py:smoke", **{"data.imbalance": True})
    assert pipeline.make_train_dataset(config)[1].data.num_classes == 7
    with pytest.raises(ValueError, match="data.num_classes=10.*num_classes=7, or 0"):
        sources.get_source(_data(imbalance=True, num_classes=10))


def _dataset(seed, shard_index=0, shard_count=1, batch_size=8, **kwargs):
    source = sources.get_source(_data())
    return pipeline.make_dataset(
        source,
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        **kwargs,
    )


def test_same_seed_same_order_other_seed_other_order():
    first = _indices(_dataset(seed=1), 10)
    np.testing.assert_array_equal(_indices(_dataset(seed=1), 10), first)
    assert not np.array_equal(_indices(_dataset(seed=2), 10), first)


def test_the_number_of_read_threads_leaves_the_batches_unchanged():
    def batches(threads):
        dataset = _dataset(seed=3, augment="rotate(20)|zoom(0.8,1.2)", read_threads=threads)
        return list(itertools.islice(iter(dataset), 6))

    for a, b in zip(batches(1), batches(4), strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["index"], b["index"])


@pytest.mark.slow
def test_worker_processes_make_the_same_batches_and_resume_where_they_stopped():
    def dataset(workers):
        return _dataset(seed=3, augment="rotate(20)|flip_lr", balance_alpha=0.5,
                        worker_count=workers)  # fmt: skip

    expected = list(itertools.islice(iter(dataset(0)), 7))
    iterator = iter(dataset(2))
    for want in expected[:4]:
        got = next(iterator)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["index"], want["index"])
    state = iterator.get_state()  # As a checkpoint saves it, after 4 batches.
    resumed = iter(dataset(2))
    resumed.set_state(state)
    for want in expected[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["index"], want["index"])


def test_each_epoch_is_a_new_permutation_of_the_split():
    source_size = len(sources.get_source(_data()))
    indices = _indices(_dataset(seed=0, batch_size=1), 2 * source_size)
    epoch_1, epoch_2 = indices[:source_size], indices[source_size:]
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(source_size))
    assert not np.array_equal(epoch_1, epoch_2)


def test_process_shards_are_disjoint_and_cover_the_split():
    source_size = len(sources.get_source(_data()))
    shard_count = 4
    shards = []
    for i in range(shard_count):
        shard_size = len(range(i, source_size, shard_count))
        shards.append(set(_indices(_dataset(0, i, shard_count, batch_size=1), shard_size)))
    for a, b in itertools.combinations(shards, 2):
        assert not a & b
    assert set().union(*shards) == set(range(source_size))
    # Each shard its own order: with one seed, record P*pi(i) + h for every h, in lockstep.
    first, second = (_indices(_dataset(0, i, 2, batch_size=1), 50) for i in (0, 1))
    assert np.mean(np.asarray(second) - np.asarray(first) == 1) < 0.2


def test_batches_are_float_images_in_range_with_int_labels():
    batch = next(iter(_dataset(seed=0)))
    assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["image"].min() >= -1.0 and batch["image"].max() <= 1.0
    assert batch["label"].dtype == np.int32
    source = sources.get_source(_data())
    expected = source[int(batch["index"][0])]["image"].astype(np.float32) / 127.5 - 1.0
    np.testing.assert_allclose(batch["image"][0], expected, atol=1e-6)


def test_iterator_state_resumes_the_same_batches():
    iterator = iter(_dataset(seed=3))
    next(iterator)
    state = iterator.get_state()
    expected = [next(iterator)["index"] for _ in range(3)]
    resumed = iter(_dataset(seed=3))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["index"], want)


# --- Augmentation and class-balanced sampling ---


def _imbalanced(split="all"):
    return sources.get_source(_data(split=split, imbalance=True, num_classes=7))


def _grain_rng(seed, position):
    """The generator grain's `random_map(seed=seed)` hands the record at `position`, read back
    through grain's public API."""
    probe = grain.MapDataset.range(position + 1).random_map(
        lambda _, rng: rng.bit_generator.state, seed=seed
    )
    rng = np.random.Generator(np.random.Philox())
    rng.bit_generator.state = probe[position]
    return rng


def test_an_augment_op_inside_the_pipeline_equals_the_op_called_directly():
    source = sources.get_source(_data())
    op = transforms.Rotate(30.0)
    dataset = pipeline.make_dataset(
        source, batch_size=4, seed=3, shard_index=1, shard_count=2, augment="rotate(30)"
    )
    op_seed = pipeline.derive_seed(3, 1, pipeline._AUGMENT_STREAM, 0)
    for b, batch in enumerate(itertools.islice(iter(dataset), 2)):
        for j, index in enumerate(batch["index"]):
            record = op.random_map(source[int(index)], _grain_rng(op_seed, 4 * b + j))
            expected = transforms.ToModelInputs().map(record)["image"]
            np.testing.assert_array_equal(batch["image"][j], expected)


def test_augment_changes_images_not_order_and_only_when_configured():
    plain = next(iter(_dataset(seed=0)))
    source = sources.get_source(_data())
    augmented = next(
        iter(
            pipeline.make_dataset(
                source, batch_size=8, seed=0, shard_index=0, shard_count=1, augment=ALL_OPS
            )
        )
    )
    np.testing.assert_array_equal(augmented["index"], plain["index"])
    assert not np.array_equal(augmented["image"], plain["image"])
    assert augmented["image"].min() >= -1.0 and augmented["image"].max() <= 1.0


def test_train_dataset_reads_augment_and_balance_from_config():
    base = {"data.imbalance": True, "data.num_classes": 7, "train.batch_size": 256}
    plain = load_config("vae.py:quickstart", **base, **{"data.balance_alpha": 0.0})
    tuned = load_config(
        "vae.py:quickstart", **base, **{"data.augment": "flip_lr", "data.balance_alpha": 1.0}
    )
    plain_batch = next(iter(pipeline.make_train_dataset(plain)[0]))
    tuned_batch = next(iter(pipeline.make_train_dataset(tuned)[0]))
    # Balanced: digit 5 (nv) falls from ~2/3 of a batch to ~1/7.
    assert (plain_batch["label"] == 5).mean() > 0.5 > 0.3 > (tuned_batch["label"] == 5).mean()


def test_unknown_augment_op_or_bad_alpha_fails_naming_the_fix():
    source = sources.get_source(_data())
    with pytest.raises(ValueError, match="Unknown augment op 'flip'.*flip_lr"):
        pipeline.make_dataset(
            source, batch_size=8, seed=0, shard_index=0, shard_count=1, augment="flip"
        )
    with pytest.raises(ValueError, match="balance_alpha=1.5"):
        pipeline.make_dataset(
            source, batch_size=8, seed=0, shard_index=0, shard_count=1, balance_alpha=1.5
        )


def _label_shares(source, alpha, num_draws=4000, shard_index=0, shard_count=1):
    dataset = pipeline.make_dataset(
        source,
        batch_size=250,
        seed=0,
        shard_index=shard_index,
        shard_count=shard_count,
        balance_alpha=alpha,
    )
    batches = list(itertools.islice(iter(dataset), num_draws // 250))
    labels = np.concatenate([b["label"] for b in batches])
    indices = np.concatenate([b["index"] for b in batches])
    return np.bincount(labels, minlength=7) / len(labels), indices


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_balanced_sampling_class_shares_follow_count_to_the_one_minus_alpha(alpha):
    """The draws, and stream_shares's expectation of them (logit adjustment's prior)."""
    source = _imbalanced()
    counts = np.bincount(source.labels, minlength=7)
    target = counts ** (1.0 - alpha) / (counts ** (1.0 - alpha)).sum()
    shares, synthetic_shares = pipeline.stream_shares(source.labels, 7, alpha, None)
    np.testing.assert_allclose(shares, target)
    np.testing.assert_array_equal(synthetic_shares, 0)
    shares, _ = _label_shares(source, alpha)
    # 4,000 draws: a share's standard error is at most 0.008.
    np.testing.assert_allclose(shares, target, atol=0.03)
    if alpha == 1.0:
        np.testing.assert_allclose(shares, 1 / 7, atol=0.03)


def test_balanced_probabilities_match_the_formula():
    labels = np.asarray([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(pipeline.balanced_probabilities(labels, 0.0), 1 / 6)
    per_class = np.bincount(labels, weights=pipeline.balanced_probabilities(labels, 1.0))
    np.testing.assert_allclose(per_class, 1 / 3)


def test_balanced_shards_draw_only_their_own_records():
    source = _imbalanced()
    for shard_index in range(2):
        shares, indices = _label_shares(source, 1.0, 1000, shard_index, shard_count=2)
        assert set(indices % 2) == {shard_index}
        assert shares.min() > 0.05


def test_augmented_balanced_iterator_resumes_the_same_batches():
    source = _imbalanced("train")

    def make():
        return pipeline.make_dataset(
            source,
            batch_size=8,
            seed=5,
            shard_index=0,
            shard_count=1,
            augment=ALL_OPS,
            balance_alpha=1.0,
        )

    iterator = iter(make())
    next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]
    resumed = iter(make())
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["index"], want["index"])
        np.testing.assert_array_equal(got["image"], want["image"])


def test_a_process_without_records_stops_every_process_not_only_itself():
    """Process 0 has records, the last process none: process 0 raises too, so no process is left
    waiting in a collective for the others."""
    images = np.zeros((6, 4, 4, 3), np.uint8)
    real = sources.ArraySource(images, np.array([0, 0, 0, 1, 1, 1], np.int32), ("a", "b"))
    with pytest.raises(ValueError, match="6 records, fewer than the 8 processes"):
        pipeline.make_dataset(real, batch_size=1, seed=0, shard_index=0, shard_count=8)
    # Synthetic images: shard 0 of 2 holds no class-b image (indices 0, 2), shard 1 holds one.
    fake = sources.ArraySource(images[:4], np.array([0, 1, 0, 0], np.int32), ("a", "b"))
    mix = synthetic.Mix(fake, 0.5, np.array([3, 1]), within_class=True)
    with pytest.raises(ValueError, match="leave process 0 of 2 none of class"):
        pipeline.make_dataset(real, batch_size=1, seed=0, shard_index=1, shard_count=2, mix=mix)
