"""The classify task's losses: class weights, logit adjustment, mixup and CutMix, each against
its closed form or torch's cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import first_train_step, load_config

from ham_synth import parallel, train, workdir
from ham_synth import state as state_lib
from ham_synth.data import pipeline, sources
from ham_synth.tasks import base, classify


def _first_step(**overrides):
    return first_train_step(load_config("vit.py:smoke", **{"train.num_devices": 1, **overrides}))


def test_class_weights_follow_the_counts():
    utils = pytest.importorskip("sklearn.utils")
    labels = np.repeat([0, 1, 2], [10, 30, 60])
    balanced = utils.compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose(classify.class_weights("inverse", "10,30,60", 3), balanced, 1e-6)
    sqrt = classify.class_weights("sqrt_inverse", "10,30,60", 3)
    assert np.dot(sqrt, [10, 30, 60]) / 100 == pytest.approx(1.0)  # Mean weight 1 over the data.
    assert sqrt[0] / sqrt[1] == pytest.approx(np.sqrt(3))
    np.testing.assert_array_equal(classify.class_weights("1,2,3", "", 3), [1, 2, 3])
    assert classify.class_weights("none", "", 3) is None
    with pytest.raises(ValueError, match="3 positive comma-separated numbers"):
        classify.class_weights("1,2", "", 3)
    with pytest.raises(ValueError, match=r"classes \[1\] have no training images"):
        classify.class_weights("inverse", "5,0,7", 3)


@pytest.mark.slow
def test_weighted_loss_equals_torchs_weighted_cross_entropy():
    torch = pytest.importorskip("torch")
    logits, batch, loss, config = _first_step(
        **{"loss.class_weights": "inverse", "loss.label_smoothing": 0.0}
    )
    counts = [int(n) for n in config.data.class_counts.split(",")]
    assert len(counts) == 7 and sum(counts) == len(pipeline.source_labels(
        sources.get_source(config.data)))  # fmt: skip
    weights = classify.class_weights("inverse", config.data.class_counts, 7)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits),
        torch.tensor(np.asarray(batch["label"])).long(),
        weight=torch.from_numpy(weights),
    )
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_mixup_mixes_images_and_pairs_the_permuted_labels():
    images = jnp.arange(8 * 2 * 2 * 3, dtype=jnp.float32).reshape(8, 2, 2, 3)
    labels = jnp.arange(8)
    mixed, partner_labels, lam = classify.mixup(images, labels, jax.random.key(0), alpha=0.4)
    assert 0.0 < float(lam) < 1.0
    perm = np.asarray(partner_labels)  # labels are the indices, so they name each partner
    assert sorted(perm) == list(range(8))
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[perm], rtol=1e-6)


@pytest.mark.slow
def test_the_mixup_loss_is_the_lam_weighted_pair_of_torch_cross_entropies():
    torch = pytest.importorskip("torch")
    config = load_config("vit.py:smoke", **{"loss.mixup_alpha": 0.4, "train.num_devices": 1})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    batch = parallel.to_global_batch(next(iter(built.dataset)), mesh)
    rng = jax.random.key(1)
    # The loss splits its rng into (dropout, mixup): redo the mixup it will draw.
    mixed, partner, lam = classify.mixup(
        batch["image"], batch["label"], jax.random.split(rng)[1], 0.4
    )
    predict = built.task.predict_fns[base.PREDICT]
    logits = torch.tensor(np.asarray(predict(state_lib.eval_variables(state), mixed)))
    _, metrics = train.make_train_step(built.task, mesh)(state, batch, rng)  # Donates state.

    def ce(labels):
        labels = torch.tensor(np.asarray(labels)).long()
        return float(torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))

    expected = float(lam) * ce(batch["label"]) + (1 - float(lam)) * ce(partner)
    assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow
def test_logit_adjustment_with_equal_class_shares_is_plain_cross_entropy():
    # balance_alpha 1 draws the imbalanced digits' classes equally: every share is 1/7.
    balanced = {"data.balance_alpha": 1.0, "loss.label_smoothing": 0.0}
    _, _, plain, config = _first_step(**balanced)
    _, _, adjusted, _ = _first_step(**balanced, **{"loss.logit_adjustment": 1.0})
    np.testing.assert_allclose([float(p) for p in config.data.class_shares.split(",")], 1 / 7,
                               rtol=1e-5)  # fmt: skip
    assert adjusted == pytest.approx(plain, rel=1e-6)


@pytest.mark.slow
def test_logit_adjustment_adds_tau_log_prior_to_the_logits_in_the_loss():
    torch = pytest.importorskip("torch")
    fields = {"data.balance_alpha": 0.0, "loss.logit_adjustment": 0.5}
    logits, batch, loss, config = _first_step(**fields)
    shares = np.array([float(p) for p in config.data.class_shares.split(",")])
    counts = np.array([int(n) for n in config.data.class_counts.split(",")])
    np.testing.assert_allclose(shares, counts / counts.sum(), rtol=1e-5)  # Natural draws.
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits + 0.5 * np.log(shares), dtype=torch.float32),
        torch.tensor(np.asarray(batch["label"])).long(),
        label_smoothing=0.1,
    )
    assert loss == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="needs data.class_shares"):
        classify.logit_offsets(1.0, "", 3)
    with pytest.raises(ValueError, match="positive prior for each of the 3 classes"):
        classify.logit_offsets(1.0, "0.5,0.5,0", 3)


def test_cutmix_pastes_one_box_of_the_partner_and_lam_is_the_kept_area():
    images = jnp.arange(8, dtype=jnp.float32)[:, None, None, None] * jnp.ones((8, 12, 12, 3))
    labels = jnp.arange(8)
    for seed in range(5):
        mixed, partner, lam = classify.cutmix(images, labels, jax.random.key(seed), alpha=1.0)
        mixed, partner = np.asarray(mixed), np.asarray(partner)
        assert sorted(partner) == list(range(8))
        pasted = mixed != np.asarray(images)  # Where an image took its partner's pixels.
        for i in range(8):
            if partner[i] == i:
                continue
            np.testing.assert_array_equal(mixed[i][pasted[i]], partner[i])
            rows, cols = np.nonzero(pasted[i, :, :, 0])
            box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) if len(rows) else 0
            assert box == len(rows)  # One rectangle.
            assert float(lam) == pytest.approx(1 - len(rows) / 144)


def test_with_mixup_and_cutmix_on_each_batch_takes_one_of_them():
    images = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    labels = jnp.arange(4)
    picks = set()
    for seed in range(12):
        rng = jax.random.key(seed)
        mixed, _, lam = classify.mix_batch(images, labels, rng, 0.4, 1.0)
        mixup_rng, cutmix_rng, _ = jax.random.split(rng, 3)
        as_mixup = classify.mixup(images, labels, mixup_rng, 0.4)
        as_cutmix = classify.cutmix(images, labels, cutmix_rng, 1.0)
        which = [np.array_equal(mixed, m[0]) and float(lam) == float(m[2])
                 for m in (as_mixup, as_cutmix)]  # fmt: skip
        assert sum(which) == 1
        picks.add(which.index(True))
    assert picks == {0, 1}
