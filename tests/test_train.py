"""The trainer: data parallelism, exact resume, the NaN guard and what lands in the workdir."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_config, tensorboard_events
from PIL import Image

from ham_synth import metric_writer, tasks, train
from ham_synth.tasks import vae


def _smoke(**overrides):
    return load_config("vae.py:smoke", **overrides)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
    overrides = {"train.total_steps": 3, "train.log_every_steps": 3}
    single = train.train_and_evaluate(
        _smoke(**overrides, **{"train.num_devices": 1}), tmp_path / "1"
    )
    multi = train.train_and_evaluate(
        _smoke(**overrides, **{"train.num_devices": 8}), tmp_path / "8"
    )

    assert jax.device_count() == 8
    assert multi.params["decoder"]["Dense_0"]["kernel"].sharding.mesh.size == 8
    loss_1 = metric_writer.read_metrics(tmp_path / "1")[-1]["train/loss"]
    loss_8 = metric_writer.read_metrics(tmp_path / "8")[-1]["train/loss"]
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for a, b in zip(_leaves(single.params), _leaves(multi.params), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_resume_matches_uninterrupted_run_bit_exactly(tmp_path):
    # The schedule spans 6 steps in both runs; the interrupted one stops at its step-3 checkpoint.
    schedule = {"optim.schedule_steps": 6}
    full = train.train_and_evaluate(_smoke(**schedule), tmp_path / "full")
    first = _smoke(**schedule, **{"train.total_steps": 3})
    train.train_and_evaluate(first, tmp_path / "resumed")
    resumed = train.train_and_evaluate(_smoke(**schedule), tmp_path / "resumed")

    assert int(resumed.step) == int(full.step) == 6
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(b, a)
    # Same data order after the resume: the per-window losses agree exactly.
    full_rows = metric_writer.read_metrics(tmp_path / "full")
    resumed_rows = metric_writer.read_metrics(tmp_path / "resumed")
    assert [r["step"] for r in resumed_rows] == [2, 3, 4, 6]
    assert resumed_rows[-1]["train/loss"] == full_rows[-1]["train/loss"]


def test_workdir_holds_config_metrics_samples_events_and_checkpoints(vae_run):
    tmp_path = vae_run  # vae.py:smoke, trained once for the session.

    assert json.loads((tmp_path / "config.json").read_text())["train"]["total_steps"] == 6
    rows = metric_writer.read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("train/loss", "train/reconstruction", "train/kl", "steps_per_sec"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in rows)
    grid = Image.open(tmp_path / "samples" / "step_0000006.png")
    # One row per class, `evals.samples.per_class` columns of 8x8 images with 1px padding,
    # upscaled 8x, after a margin that names the classes.
    width, height = grid.size
    assert height == (10 * 9 + 1) * 8 and width > (2 * 9 + 1) * 8
    assert json.loads((tmp_path / "config.json").read_text())["data"]["class_names"] == ",".join(
        str(d) for d in range(10)
    )
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(
        int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()
    ) == [
        3,
        6,
    ]


def _nan_from_step(step):
    """The VAE task, with NaN pixels fed from optimizer step `step` on (so params go NaN too)."""

    def make_task(config):
        task = vae.make_task(config)

        def train_step(state, batch, rng):
            poison = jnp.where(state.step >= step, jnp.nan, 1.0)
            return task.train_step(state, {**batch, "image": batch["image"] * poison}, rng)

        return dataclasses.replace(task, train_step=train_step)

    return make_task


def test_non_finite_loss_stops_naming_steps_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(tasks._TASKS, "vae", _nan_from_step(3))  # Step 4 is the first bad one.
    with pytest.raises(train.NonFiniteLossError, match=r"after step 3 \(steps 4\.\.4\)"):
        train.train_and_evaluate(_smoke(), tmp_path)

    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    assert manager.latest_step() == 3
    params = manager.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    assert all(np.isfinite(x).all() for x in _leaves(params["state"]))


@pytest.mark.slow
def test_non_finite_auxiliary_metric_stops_naming_it(tmp_path, monkeypatch):
    def make_task(config):
        task = vae.make_task(config)

        def train_step(state, batch, rng):
            state, metrics = task.train_step(state, batch, rng)
            bad = jnp.where(state.step >= 5, jnp.inf, 0.0)  # From update 5 (step 5) on.
            return state, {**metrics, "train/probe": metrics["train/kl"] + bad}

        return dataclasses.replace(task, train_step=train_step)

    monkeypatch.setitem(tasks._TASKS, "vae", make_task)
    with pytest.raises(train.NonFiniteLossError, match=r"train/probe is inf at step 6") as error:
        train.train_and_evaluate(_smoke(), tmp_path)
    assert "train/loss" not in str(error.value)  # The loss stayed finite; only the probe broke.


def test_tensorboard_tags_are_made_legal_here_without_a_log_line_each(tmp_path, caplog):
    """Digits' class names ('5:nv') put ':' in per-class scalar names; TensorBoard gets the tag
    tensorboardX would make ('_' for ':'), and the log gets no line per renamed scalar."""
    writer = metric_writer.MetricWriter(tmp_path, first_step=0, total_steps=1)
    with caplog.at_level("INFO"):
        writer.write_scalars(1, {"val/5:nv/f1": 0.5, "/train/loss": 1.0})
    writer.close()

    assert "illegal" not in caplog.text
    tags = {v.tag for e in tensorboard_events(tmp_path / "tensorboard") for v in e.summary.value}
    assert tags == {"val/5_nv/f1", "train/loss"}
    # metrics.jsonl keeps the names as written.
    assert set(metric_writer.read_metrics(tmp_path)[0]) == {"step", "val/5:nv/f1", "/train/loss"}
