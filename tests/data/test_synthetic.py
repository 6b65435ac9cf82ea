"""Real + synthetic training data: each policy's class and synthetic shares over many batches,
class names matched by name, val and test left real, and a bit-exact resume with mixing on."""

import collections
import csv
import itertools
import json

import jax
import numpy as np
import pytest
from conftest import first_train_step, load_config
from PIL import Image

from ham_synth import config_lib, metric_writer, parallel, train, workdir
from ham_synth import state as state_lib
from ham_synth.data import image_folder, pipeline, sources, synthetic
from ham_synth.evaluators import classification
from ham_synth.tasks import base, classify

NAMES = [f"{d}:{name}" for d, name in enumerate(("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"))]


def _sample_folder(root, per_class: dict[str, int], size=8, seed=0):
    """A `ham-synth sample`-like folder: noise PNGs under root/<class>/ and a manifest.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, count in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            file = f"{name}/{name}_{i:06d}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(root / file)
            rows.append({"file": file, "class": name, "synthetic": "true"})
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "class", "synthetic"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def _config(folder, **synthetic_fields):
    overrides = {f"data.synthetic.{k}": v for k, v in synthetic_fields.items()}
    return load_config(
        "vit.py:smoke",
        **{"data.synthetic.dirs": str(folder), "data.balance_alpha": 0.0, "data.augment": "",
           "train.batch_size": 200},
        **overrides,
    )  # fmt: skip


def _stream(config, num_batches=20):
    dataset, config = pipeline.make_train_dataset(config)
    batches = list(itertools.islice(iter(dataset), num_batches))
    labels = np.concatenate([b["label"] for b in batches])
    fake = np.concatenate([b["synthetic"] for b in batches])
    return labels, fake, config


def _real_counts():
    return np.bincount(sources.get_source(load_config("vit.py:smoke").data).labels, minlength=7)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _sample_folder(tmp_path_factory.mktemp("synthetic"), dict.fromkeys(NAMES, 240))


def test_balance_tops_every_class_up_to_the_largest(folder):
    counts = _real_counts()
    labels, fake, _ = _stream(_config(folder, policy="balance"))
    # 4,000 draws: a share's standard error is at most 0.008.
    np.testing.assert_allclose(np.bincount(labels, minlength=7) / len(labels), 1 / 7, atol=0.03)
    added = counts.max() - counts
    assert fake.mean() == pytest.approx(added.sum() / (added.sum() + counts.sum()), abs=0.03)
    assert not fake[labels == 5].any()  # nv, the largest class, gets none.


def _recorded(text: str) -> np.ndarray:
    return np.asarray([float(p) for p in text.split(",")])


def test_add_per_class_and_only_follow_their_shares(folder):
    counts = _real_counts()
    labels, fake, config = _stream(_config(folder, policy="add", per_class=30))
    assert fake.mean() == pytest.approx(210 / (210 + counts.sum()), abs=0.03)
    synthetic_shares = np.bincount(labels[fake], minlength=7) / fake.sum()
    np.testing.assert_allclose(synthetic_shares, 1 / 7, atol=0.03)
    # The recorded shares (logit adjustment's prior, the study's stream table) are the stream's.
    drawn = np.bincount(labels, minlength=7)
    np.testing.assert_allclose(drawn / len(labels), _recorded(config.data.class_shares), atol=0.03)
    expected = 30 / (counts + 30)
    np.testing.assert_allclose(_recorded(config.data.synthetic_shares), expected, rtol=1e-5)
    np.testing.assert_allclose(np.bincount(labels[fake], minlength=7) / drawn, expected, atol=0.1)
    labels, fake, _ = _stream(_config(folder, policy="only"), num_batches=5)
    assert fake.all()
    np.testing.assert_allclose(np.bincount(labels, minlength=7) / len(labels), 1 / 7, atol=0.04)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_ratio_replaces_draws_within_classes_and_keeps_the_real_only_stream(folder, alpha):
    """Position by position, the mixed stream has the real-only stream's class, and its record
    wherever it is real: the real draw policy is the real-only run's, paired."""
    minority = ",".join(n for n in NAMES if n != NAMES[5])  # All but nv.
    mixed = _config(folder, policy="ratio", ratio=0.3, classes=minority)
    mixed.data.balance_alpha = alpha
    real_only = config_lib.with_values(mixed, {"data.synthetic.dirs": ""})

    def drawn(config):
        dataset, config = pipeline.make_train_dataset(config)
        batches = list(itertools.islice(iter(dataset), 20))
        return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}, config

    stream, config = drawn(mixed)
    real, real_config = drawn(real_only)
    labels, fake = stream["label"], stream["synthetic"]
    np.testing.assert_array_equal(labels, real["label"])
    np.testing.assert_array_equal(stream["index"][~fake], real["index"][~fake])
    assert not fake[labels == 5].any()
    # 4,000 draws, about 3,400 outside nv: the share's standard error is under 0.01.
    assert fake[labels != 5].mean() == pytest.approx(0.3, abs=0.03)
    assert config.data.class_shares == real_config.data.class_shares
    np.testing.assert_allclose(_recorded(config.data.synthetic_shares), [0.3] * 5 + [0, 0.3])
    np.testing.assert_allclose(_recorded(real_config.data.synthetic_shares), 0)


@pytest.mark.parametrize("loss_weight", [1.0, 0.25, 0.0])
def test_the_loss_weighs_each_synthetic_image_by_loss_weight(folder, loss_weight):
    config = _config(folder, policy="ratio", ratio=0.5, loss_weight=loss_weight)
    config.update_from_flattened_dict({"train.num_devices": 1, "train.batch_size": 32,
                                       "loss.label_smoothing": 0.0})  # fmt: skip
    logits, batch, loss, _ = first_train_step(config)
    fake = np.asarray(batch["synthetic"])
    assert 0 < fake.sum() < len(fake)
    per_example = -jax.nn.log_softmax(logits)[np.arange(len(fake)), np.asarray(batch["label"])]
    weights = np.where(fake, loss_weight, 1.0)
    assert loss == pytest.approx(float((weights * per_example).sum() / weights.sum()), rel=1e-5)


def test_with_mixup_a_synthetic_image_at_loss_weight_0_teaches_nothing_even_as_a_partner(folder):
    config = _config(folder, policy="ratio", ratio=0.5, loss_weight=0.0)
    fields = {"train.num_devices": 1, "train.batch_size": 32, "loss.label_smoothing": 0.0}
    # A large first step: the head starts at zero, and near-equal logits would hide whose loss
    # each term takes.
    big_step = {"optim.lr": 1.0, "optim.warmup_steps": 0}
    config.update_from_flattened_dict({**fields, **big_step, "loss.mixup_alpha": 0.4})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    step = train.make_train_step(built.task, mesh)
    batches = (parallel.to_global_batch(b, mesh) for b in iter(built.dataset))
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    state, _ = step(state, next(batches), jax.random.key(2))
    batch = next(batches)
    labels, fake = np.asarray(batch["label"]), np.asarray(batch["synthetic"])
    rng = jax.random.key(1)
    # The loss splits its rng into (dropout, mixup): redo the mixup it will draw.
    mixed, (partner, partner_fake), lam = classify.mixup(
        batch["image"], (batch["label"], batch["synthetic"]), jax.random.split(rng)[1], 0.4
    )
    partner, partner_fake = np.asarray(partner), np.asarray(partner_fake)
    assert (partner_fake != fake).any()  # Real rows with synthetic partners, and the reverse.
    logits = built.task.predict_fns[base.PREDICT](state_lib.eval_variables(state), mixed)
    log_p = np.asarray(jax.nn.log_softmax(logits))
    assert log_p.std(axis=0).min() > 0.1  # Each class's log-probability varies over the batch.
    _, metrics = step(state, batch, rng)  # Donates state.

    def real_mean_ce(targets, synthetic):  # Loss weight 0: the synthetic rows drop out.
        return -log_p[np.arange(len(targets)), targets][~synthetic].mean()

    lam = float(lam)
    expected = lam * real_mean_ce(labels, fake) + (1 - lam) * real_mean_ce(partner, partner_fake)
    assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)


def test_synthetic_classes_limit_what_is_taken(folder):
    chosen = f"{NAMES[0]},{NAMES[3]}"
    labels, fake, _ = _stream(_config(folder, policy="add", per_class=30, classes=chosen))
    assert set(np.unique(labels[fake]).tolist()) == {0, 3}
    # balance tops up the named classes only (it asked the others for images too, and failed).
    balance = _config(folder, policy="balance", classes=chosen)
    labels, fake, _ = _stream(balance)
    assert set(np.unique(labels[fake]).tolist()) == {0, 3}
    with pytest.raises(ValueError, match=r"synthetic.classes names \['zz'\]"):
        _stream(_config(folder, classes="zz"))


def test_several_folders_give_their_images_evenly(tmp_path, monkeypatch):
    # Real + every generator's set: per_class images of a class come from every folder alike,
    # each folder's first; a folder short of its half leaves the rest to the others.
    first = _sample_folder(tmp_path / "a", {NAMES[0]: 30, NAMES[3]: 4}, seed=1)
    second = _sample_folder(tmp_path / "b", {NAMES[0]: 30, NAMES[3]: 30}, seed=2)
    config = _config(f"{first},{second}", policy="ratio", ratio=0.5, per_class=20)
    monkeypatch.setattr(synthetic, "IN_MEMORY_BYTES", 0)  # Keep the paths.
    real_labels = sources.get_source(load_config("vit.py:smoke").data).labels
    mix = synthetic.make_mix(config.data.synthetic, tuple(NAMES), real_labels, 8)
    taken = collections.Counter((p.parent.parent.name, p.parent.name) for p in mix.source.paths)
    assert taken == {("a", NAMES[0]): 10, ("b", NAMES[0]): 10, ("a", NAMES[3]): 4,
                     ("b", NAMES[3]): 16}  # fmt: skip
    from_a = sorted(p.name for p in mix.source.paths if p.parent == tmp_path / "a" / NAMES[0])
    assert from_a == [f"{NAMES[0]}_{i:06d}.png" for i in range(10)]


def test_small_sets_are_decoded_once_into_the_same_stream(folder, monkeypatch):
    """A set under synthetic.IN_MEMORY_BYTES is held decoded; the batches equal those of the
    decode-on-access path."""
    config = _config(folder, policy="ratio", ratio=0.5)
    mix = synthetic.make_mix(config.data.synthetic, tuple(NAMES), np.arange(7), 8)
    assert isinstance(mix.source, sources.ArraySource)
    in_memory = list(itertools.islice(iter(pipeline.make_train_dataset(config)[0]), 3))
    monkeypatch.setattr(synthetic, "IN_MEMORY_BYTES", 0)
    mix = synthetic.make_mix(config.data.synthetic, tuple(NAMES), np.arange(7), 8)
    assert isinstance(mix.source, image_folder.FolderSource)
    on_access = list(itertools.islice(iter(pipeline.make_train_dataset(config)[0]), 3))
    for a, b in zip(in_memory, on_access, strict=True):
        assert a["synthetic"].any()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_class_names_are_matched_by_name_and_shortfalls_are_named(tmp_path):
    odd = _sample_folder(tmp_path / "odd", {"melanoma": 3, NAMES[0]: 2})
    with pytest.raises(ValueError, match=r"classes \['melanoma'\].*not among the real data's"):
        _stream(_config(odd))
    few = _sample_folder(tmp_path / "few", {NAMES[3]: 2})
    with pytest.raises(ValueError, match=r"0:akiec: needs \d+, has 0.*3:df: needs \d+, has 2"):
        _stream(_config(few, policy="balance"))
    with pytest.raises(FileNotFoundError, match="no manifest.csv in"):
        _stream(_config(tmp_path))
    with pytest.raises(ValueError, match="policy='mix'; choose one of"):
        _stream(_config(few, policy="mix"))
    twice = config_lib.with_values(_config(few, policy="balance"), {"data.balance_alpha": 0.5})
    with pytest.raises(ValueError, match="balanced twice.*balance_alpha=0, or use policy 'ratio'"):
        _stream(twice)
    (few / NAMES[3] / f"{NAMES[3]}_000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in the manifests are "
                       r"missing, e.g. \[.*_000001.png'\]; sample the folder again"):  # fmt: skip
        _stream(_config(few))


def test_resume_is_bit_exact_with_mixing(folder):
    config = _config(folder, policy="ratio", ratio=0.5)
    config.data.augment = "flip_lr|rotate(10)"
    config.data.balance_alpha = 1.0
    dataset, _ = pipeline.make_train_dataset(config)
    iterator = iter(dataset)
    next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(2)]
    resumed = iter(pipeline.make_train_dataset(config)[0])
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in ("image", "label", "index", "synthetic"):
            np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("policy", synthetic.POLICIES)
def test_evaluation_splits_stay_real_while_training_draws_synthetic_images(folder, policy):
    """With a live sample folder (the training stream draws from it), each split a classifier
    evaluates holds the real split's images and labels, none flagged synthetic."""
    config = _config(folder, policy=policy, ratio=0.5)
    _, fake, config = _stream(config, num_batches=2)
    assert fake.any()
    mesh = parallel.make_mesh(1)
    task = classify.make_task(config)
    for split in ("val", "test"):
        real = pipeline.eval_source(config_lib.with_values(config, {"data.split": split}).data)
        evaluated = classification.SplitClassifier("t", config, task, mesh, split, 8).source
        assert len(evaluated) == len(real), split
        labels = pipeline.source_labels(evaluated)
        np.testing.assert_array_equal(labels, pipeline.source_labels(real))
        assert not any(evaluated[i].get("synthetic", False) for i in range(len(evaluated)))


@pytest.mark.slow
def test_training_reports_the_synthetic_share_and_evaluates_on_real_images_only(folder, tmp_path):
    config = _config(folder, policy="ratio", ratio=0.5)
    config.train.batch_size = 16
    config.train.num_devices = 1
    config.evals.attention.every_steps = -1
    train.train_and_evaluate(config, tmp_path)
    rows = metric_writer.read_metrics(tmp_path)
    shares = [r["train/synthetic_share"] for r in rows if "train/synthetic_share" in r]
    assert shares and 0.2 < np.mean(shares) < 0.8
    for split in ("val", "test"):
        real = sources.get_source(load_config("vit.py:smoke", **{"data.split": split}).data)
        record = json.loads(next((tmp_path / "evals" / split).glob("step_*.json")).read_text())
        assert record["num_examples"] == len(real), split
    eval_source = pipeline.eval_source(load_config("vit.py:smoke", **{"data.split": "val"}).data)
    assert "synthetic" not in eval_source[0]
