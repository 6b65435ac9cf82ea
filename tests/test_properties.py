"""Properties that must hold for any input, checked on inputs hypothesis draws: lesion-grouped
splits, augmentation ops, and the real + synthetic mixing."""

import collections

import grain
import numpy as np
import pytest
from conftest import load_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ham_synth.data import ham10000, pipeline, synthetic, transforms

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- Splits ---


@st.composite
def lesions(draw):
    """(class, number of images) per lesion, over a few of the classes, so that most draws give
    each class enough lesions for every split."""
    classes = draw(st.lists(st.sampled_from(ham10000.CLASS_NAMES), min_size=1, max_size=4,
                            unique=True))  # fmt: skip
    return draw(st.lists(st.tuples(st.sampled_from(classes), st.integers(1, 4)), max_size=80))


def _records(lesion_list):
    """Records of lesions given as (class, number of images)."""
    records = []
    for lesion, (dx, size) in enumerate(lesion_list):
        for _ in range(size):
            records.append(
                ham10000.Record(
                    image_id=f"ISIC_{len(records):07d}", lesion_id=f"HAM_{lesion:07d}", dx=dx,
                    dx_type="histo", age=50.0, sex="male", localization="back", path=None,
                    row=len(records) + 2,
                )
            )  # fmt: skip
    return records


@SETTINGS
@given(
    lesion_list=lesions(),
    val=st.sampled_from([0.0, 0.1, 0.2]),
    test=st.sampled_from([0.1, 0.2, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_splits_keep_lesions_whole_put_every_class_everywhere_and_follow_the_seed(
    lesion_list, val, test, seed
):
    records = _records(lesion_list)
    splits = set(ham10000.split_fractions(val, test))
    per_class = collections.Counter(dx for dx, _ in lesion_list)
    kwargs = dict(val_fraction=val, test_fraction=test, seed=seed)
    # Too few lesions for some class to be in every split.
    if min(per_class.values(), default=len(splits)) < len(splits):
        with pytest.raises(ham10000.DataError, match="fewer than"):
            ham10000.assign_splits(records, **kwargs)
        return

    assignment = ham10000.assign_splits(records, **kwargs)

    assert assignment.keys() == {r.image_id for r in records}
    splits_of_lesion = collections.defaultdict(set)
    splits_of_class = collections.defaultdict(set)
    for r in records:
        splits_of_lesion[r.lesion_id].add(assignment[r.image_id])
        splits_of_class[r.dx].add(assignment[r.image_id])
    assert all(len(s) == 1 for s in splits_of_lesion.values())
    assert all(s == splits for s in splits_of_class.values())
    assert ham10000.assign_splits(records, **kwargs) == assignment


# --- Augmentation ops ---

geometric_ops = st.one_of(
    st.just("flip_lr"),
    st.just("flip_ud"),
    st.integers(1, 180).map(lambda degrees: f"rotate({degrees})"),
    st.tuples(st.floats(0.5, 0.99), st.floats(1.01, 2.0)).map(lambda z: f"zoom({z[0]},{z[1]})"),
    st.tuples(st.floats(0.05, 1.0), st.floats(0.0, 1.0)).map(
        lambda a: f"random_resized_crop({a[0]},{a[0] + (1 - a[0]) * a[1]})"
    ),
)
color_ops = st.tuples(*[st.floats(0.0, 0.5)] * 3).map(lambda s: "color_jitter({},{},{})".format(*s))
images = st.tuples(st.integers(2, 24), st.integers(2, 24), st.integers(0, 2**16)).map(
    lambda t: np.random.default_rng(t[2]).integers(0, 256, (t[0], t[1], 3), dtype=np.uint8)
)


@SETTINGS
@given(spec=st.one_of(geometric_ops, color_ops), image=images, seed=st.integers(0, 2**16))
def test_augment_ops_keep_shape_dtype_and_range_and_are_a_function_of_the_rng(spec, image, seed):
    (op,) = transforms.parse_ops(spec)
    record = {"image": image, "label": np.int32(1), "index": 3}

    out = op.random_map(record, np.random.default_rng(seed))["image"]

    assert out.shape == image.shape and out.dtype == np.uint8
    if not spec.startswith("color_jitter"):  # Geometry moves and blends pixels, never brighter.
        assert image.min() <= out.min() and out.max() <= image.max()
    again = op.random_map(record, np.random.default_rng(seed))["image"]
    np.testing.assert_array_equal(out, again)


@SETTINGS
@given(spec=geometric_ops, seed=st.integers(0, 2**16), order_seed=st.integers(0, 2**16))
def test_an_augmented_record_depends_on_its_position_not_on_the_reading_order(
    spec, seed, order_seed
):
    data = [{"image": np.full((6, 6, 3), i * 20, np.uint8) + np.arange(6, dtype=np.uint8)[:, None],
             "label": np.int32(i % 3), "index": i} for i in range(8)]  # fmt: skip
    dataset = grain.MapDataset.source(data).random_map(transforms.parse_ops(spec)[0], seed=seed)
    in_order = [dataset[i]["image"] for i in range(len(data))]
    order = np.random.default_rng(order_seed).permutation(len(data))
    for i in order:
        np.testing.assert_array_equal(dataset[int(i)]["image"], in_order[i])


# --- Real + synthetic mixing ---


@SETTINGS
@given(weight=st.floats(0.05, 0.95), seed=st.integers(0, 2**31))
def test_each_stream_position_is_synthetic_with_the_mix_weight_whatever_the_seed(weight, seed):
    draws = pipeline.MixDraws(weight, seed)
    picks = np.asarray([draws[i][0] for i in range(2000)])
    assert abs(picks.mean() - weight) < 4 * np.sqrt(weight * (1 - weight) / len(picks))
    assert [draws[i] for i in (5, 1999, 5)] == [draws[5], draws[1999], draws[5]]


@SETTINGS
@given(rate=st.floats(0.05, 0.95), seed=st.integers(0, 2**31), held=st.sets(st.integers(0, 2)))
def test_a_within_class_pick_keeps_the_class_and_depends_only_on_its_position(rate, seed, held):
    real_labels = np.arange(300) % 3
    fake_labels = np.repeat([0, 1, 2], 10)
    fake_indices = np.flatnonzero(np.isin(fake_labels, sorted(held)))
    replace = pipeline.ReplaceWithinClass(real_labels, fake_labels, fake_indices, rate, seed)
    records = np.random.default_rng(seed).permutation(300)  # Position p draws record records[p].
    picks = [replace(position, int(record)) for position, record in enumerate(records)]
    for record, (which, index) in zip(records, picks, strict=True):
        if which:  # A synthetic record the set holds, of the real draw's class.
            assert index in fake_indices and fake_labels[index] == real_labels[record]
        else:  # The real draw itself.
            assert index == record
    fake = np.asarray([which for which, _ in picks], bool)
    held_draws = np.isin(real_labels[records], sorted(held))
    assert not fake[~held_draws].any()
    if held_draws.any():
        in_held = fake[held_draws]
        assert abs(in_held.mean() - rate) < 4 * np.sqrt(rate * (1 - rate) / len(in_held)) + 1e-9
        # Another record of the same class at the same position: the same choice and pick.
        for position, record in enumerate(records[:50]):
            which, index = replace(position, int((record + 3) % 300))  # Labels repeat every 3.
            assert which == picks[position][0]
            if which:
                assert index == picks[position][1]
        # One record at many positions: drawn afresh at each (not once per record).
        first = int(np.flatnonzero(held_draws)[0])
        choices = {replace(position, int(records[first])) for position in range(200)}
        assert len(choices) > 1
    assert [replace(7, 4), replace(299, 2)] == [replace(7, 4), replace(299, 2)]


# (policy, per_class, wanted) for 5, 1 and 0 real images and 0, 3 and 9 synthetic ones per class.
WANTED = [
    ("balance", 0, [0, 4, 5]),  # Up to the largest real class (more than the folders hold).
    ("balance", 3, [0, 2, 3]),  # Up to 3; a class above it takes none.
    ("add", 0, [0, 3, 9]),  # All they hold.
    ("add", 2, [0, 2, 2]),  # 2 of each class they hold.
    ("ratio", 0, [0, 3, 9]),
    ("only", 4, [0, 4, 4]),  # 4 of each class they hold; a shortfall is named when read.
]


@pytest.mark.parametrize(("policy", "per_class", "wanted"), WANTED)
def test_each_policy_takes_what_it_promises_per_class(policy, per_class, wanted):
    config = load_config("vit.py:smoke").data.synthetic
    config.update(policy=policy, per_class=per_class)
    real, available = np.array([5, 1, 0]), np.array([0, 3, 9])
    np.testing.assert_array_equal(synthetic.wanted_counts(config, available, real), wanted)
