"""Evaluators in the training loop: schedule, metric keys and files, the best checkpoint, the
fid evaluator in a small feature space, and failures at startup."""

import json

import numpy as np
import pytest
from conftest import load_config

from ham_synth import evaluate, evaluators, metric_writer, parallel, train, workdir
from ham_synth.evaluators import common, features, fid, realism


class Scripted:
    """An evaluator that returns the next value of a script and records when it ran."""

    calls: list[int] = []
    script: list[float] = []

    def __init__(self, *, name, config, task, mesh, workdir, scale: float = 1.0):
        del name, config, task, mesh, workdir
        self.scale = scale

    def run(self, state, step):
        Scripted.calls.append(step)
        assert int(state.step) == step  # Evaluated on the state after `step` updates.
        return common.Result(
            scalars={"value": self.scale * Scripted.script[len(Scripted.calls) - 1]},
            details={"note": "scripted"},
        )


@pytest.fixture
def scripted(monkeypatch):
    monkeypatch.setitem(evaluators._EVALUATORS, "scripted", Scripted)
    Scripted.calls = []
    Scripted.script = [5.0, 3.0, 4.0, 1.0, 2.0, 6.0, 7.0]
    return Scripted


def _config(**overrides):
    base = {"train.ckpt_every_steps": 100, "train.log_every_steps": 100}
    return load_config("vae.py:smoke", **{**base, **overrides})


def _with_scripted_eval(config, every_steps, **options):
    config.unlock()
    config.evals.probe = {"type": "scripted", "every_steps": every_steps, **options}
    config.lock()
    return config


@pytest.mark.slow
def test_an_evaluator_runs_at_its_steps_and_the_end_and_logs_name_slash_metric(tmp_path, scripted):
    config = _with_scripted_eval(_config(), every_steps=4, scale=10.0)
    train.train_and_evaluate(config, tmp_path)

    assert scripted.calls == [4, 6]
    rows = {r["step"]: r for r in metric_writer.read_metrics(tmp_path)}
    assert rows[4]["probe/value"] == 50.0 and rows[6]["probe/value"] == 30.0
    assert "probe/value" not in rows.get(2, {})
    record = json.loads((tmp_path / "evals" / "probe" / "step_0000004.json").read_text())
    assert record == {"step": 4, "scalars": {"probe/value": 50.0}, "note": "scripted"}


@pytest.mark.parametrize(("every_steps", "expected"), [(0, [6]), (-1, [])])
def test_every_steps_zero_runs_at_the_end_only_and_minus_one_never(
    tmp_path, scripted, every_steps, expected
):
    train.train_and_evaluate(_with_scripted_eval(_config(), every_steps), tmp_path)
    assert scripted.calls == expected


@pytest.mark.slow
def test_the_best_checkpoint_follows_the_metric_and_resume_uses_the_latest(tmp_path, scripted):
    config = _with_scripted_eval(
        _config(**{"train.keep_checkpoints": 1, "train.best.metric": "probe/value"}),
        every_steps=1,
    )
    config.train.best.mode = "min"
    train.train_and_evaluate(config, tmp_path)

    # Values 5, 3, 4, 1, 2, 6 at steps 1..6: the minimum is at step 4; step 6 is the latest.
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 6]
    assert workdir.load(tmp_path, "best").step == 4
    assert workdir.load(tmp_path).step == 6
    # A longer run resumes from the latest (6), not the best.
    longer = _with_scripted_eval(
        _config(
            **{
                "train.keep_checkpoints": 1,
                "train.best.metric": "probe/value",
                "train.total_steps": 7,
                "optim.schedule_steps": 6,
            }
        ),
        every_steps=1,
    )
    longer.train.best.mode = "min"
    Scripted.calls = []
    state = train.train_and_evaluate(longer, tmp_path)
    assert int(state.step) == 7 and Scripted.calls == [7]


def test_a_best_metric_no_evaluator_computes_is_refused(tmp_path):
    config = _config(**{"train.best.metric": "val/accuracy"})
    with pytest.raises(ValueError, match="no evaluator named 'val'"):
        train.train_and_evaluate(config, tmp_path)
    # The classifier's test entry runs on the best checkpoint after training: it cannot rank.
    config = load_config("vit.py:smoke", **{"train.best.metric": "test/accuracy"})
    with pytest.raises(ValueError, match="no evaluator named 'test' runs in training"):
        train.train_and_evaluate(config, tmp_path / "after")
    # A key the evaluator does not return: refused at its first evaluation, not at the end.
    config = load_config("vit.py:smoke", **{"train.best.metric": "val/acuracy"})
    with pytest.raises(ValueError, match=r"'val/acuracy', but evaluator 'val' returns \[.*'val/"
                                         r"accuracy'"):  # fmt: skip
        train.train_and_evaluate(config, tmp_path / "typo")
    assert not list((tmp_path / "typo" / "checkpoints").glob("*/"))


def test_unknown_type_or_option_names_the_valid_ones(tmp_path, scripted):
    config = _with_scripted_eval(_config(), every_steps=1, scal=2.0)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['scal'\].*\['scale'\]"):
        train.train_and_evaluate(config, tmp_path)
    config = _config()
    config.unlock()
    config.evals.probe = {"type": "scriptd", "every_steps": 1}
    with pytest.raises(ValueError, match="type='scriptd'; choose one of"):
        train.train_and_evaluate(config, tmp_path)


def test_a_best_checkpoint_entry_must_run_at_the_end_with_a_best_metric(tmp_path):
    config = load_config("vit.py:smoke", **{"evals.test.every_steps": 3})
    with pytest.raises(ValueError, match="every_steps 0 .* and a train.best.metric"):
        train.train_and_evaluate(config, tmp_path)
    config = load_config("vit.py:smoke", **{"train.best.metric": ""})
    with pytest.raises(ValueError, match="checkpoint='best' evaluates the best checkpoint"):
        train.train_and_evaluate(config, tmp_path)
    config = load_config("vit.py:smoke", **{"evals.test.checkpoint": "last"})
    with pytest.raises(ValueError, match=r"checkpoint='last'; choose one of \('current', 'best'"):
        train.train_and_evaluate(config, tmp_path)


def test_fid_on_with_missing_inception_weights_fails_before_training(tmp_path):
    config = _config(
        **{
            "evals.fid.every_steps": 3,
            "evals.fid.inception_weights": str(tmp_path / "absent.npz"),
        }
    )
    with pytest.raises(FileNotFoundError, match="ham-synth convert-inception"):
        train.train_and_evaluate(config, tmp_path / "w")
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_pixel_features_are_the_average_pooled_image():
    mesh = parallel.make_mesh(1)
    net = features.get_feature_net("pixels", mesh, pixel_grid=2)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, :2, :2] = 255  # Top-left quarter white in image 0.
    images[1] = 51
    result = np.asarray(net.fn(images))
    expected0 = np.zeros((2, 2, 3))
    expected0[0, 0] = 1.0
    np.testing.assert_allclose(result[0], expected0.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(result[1], np.full(12, 0.2), atol=1e-6)
    assert net.name == "pixels2" and not net.is_inception


def test_fake_labels_follow_the_real_split():
    real = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_array_equal(realism.fake_labels(real, 0, seed=0), real)
    drawn = realism.fake_labels(real, 12, seed=0)
    np.testing.assert_array_equal(np.bincount(drawn), 2 * np.bincount(real))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FID from")
def test_fid_evaluator_in_pixel_space_logs_fd_not_fid_and_matches_the_metrics(tmp_path):
    overrides = {
        "train.total_steps": 3,
        "evals.fid.every_steps": 3,
        "evals.fid.features": "pixels",
        "evals.fid.pixel_grid": 2,
        "evals.fid.per_class": True,
        "evals.fid.batch_size": 16,
        "optim.warmup_steps": 1,
    }
    # The VAE: one decoder pass per sample, where the smoke DDPM takes five UNet passes.
    state = train.train_and_evaluate(load_config("vae.py:smoke", **overrides), tmp_path)

    row = metric_writer.read_metrics(tmp_path)[-1]
    assert row["step"] == 3
    for key in ("fid/fd", "fid/kd", "fid/precision", "fid/recall", "fid/3/fd"):
        assert np.isfinite(row[key]), key
    assert "fid/fid" not in row and "fid/kid" not in row  # Not the Inception space: never "FID".
    record = json.loads((tmp_path / "evals" / "fid" / "step_0000003.json").read_text())
    assert record["feature_space"] == "pixels2"

    # The logged distance is the Fréchet distance of the same samples' pooled pixels.
    run = workdir.load(tmp_path)
    entry = evaluators.from_config(run.config, run.task, parallel.make_mesh(), tmp_path, ["fid"])[0]
    fake = entry.evaluator.fake_features(state)
    real = entry.evaluator.real
    assert fake.shape == real.shape == (len(entry.evaluator.labels), 12)
    expected = fid.frechet_distance(*fid.compute_statistics(real), *fid.compute_statistics(fake))
    np.testing.assert_allclose(row["fid/fd"], expected, rtol=1e-5)


def test_evaluate_runs_a_saved_runs_evaluators_at_the_step_asked(tmp_path, scripted):
    config = _with_scripted_eval(
        _config(**{"train.ckpt_every_steps": 3}), every_steps=-1, scale=2.0
    )  # Off in training; checkpoints at steps 3 and 6.
    train.train_and_evaluate(config, tmp_path)
    assert scripted.calls == []

    scalars = evaluate.evaluate(str(tmp_path), step="3", evals="probe")
    assert scripted.calls == [3] and scalars == {"probe/value": 10.0}
    assert (tmp_path / "evals" / "probe" / "step_0000003.json").exists()
    # By default, every entry that is not off: here the sample grid, which has no scalars.
    assert evaluate.evaluate(str(tmp_path)) == {}
    assert scripted.calls == [3]
    with pytest.raises(ValueError, match=r"No evaluator \['nope'\] in config.evals"):
        evaluate.evaluate(str(tmp_path), evals="nope")
