"""Faults a long run meets, each with the behaviour docs/reliability.md promises: hard kills
(anywhere, and inside a checkpoint write), damaged checkpoints, a checkpoint of another model,
and torn or stale metric logs."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, load_config, tensorboard_events
from orbax.checkpoint._src.path import atomicity
from tensorboardX.proto import event_pb2

from ham_synth import checkpoint, fileio, metric_writer, run_config, train
from ham_synth import workdir as workdir_lib

# 10 steps, a checkpoint every 2 and a log row every step: a kill can land anywhere.
KILL_OVERRIDES = {
    "train.total_steps": 10,
    "train.ckpt_every_steps": 2,
    "train.log_every_steps": 1,
    "evals.samples.every_steps": 1000,
}


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_same_state(a, b):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(y, x)


def _train_command(workdir, overrides, program=("-m", "ham_synth.main")):
    return [
        sys.executable, *program, "train", f"--config={REPO}/configs/vae.py:smoke",
        f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in overrides.items()],
    ]  # fmt: skip


def _assert_steps_logged_once(workdir):
    steps = [row["step"] for row in metric_writer.read_metrics(workdir)]
    assert steps == sorted(set(steps)), steps


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The state a run of KILL_OVERRIDES ends with when nothing stops it."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return train.train_and_evaluate(load_config("vae.py:smoke", **KILL_OVERRIDES), workdir)


# Seed 0 in the suite; 1-5 with `pytest -m soak`.
SOAK_SEEDS = [pytest.param(seed, marks=pytest.mark.soak) for seed in range(1, 6)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, *SOAK_SEEDS])
def test_sigkill_in_a_checkpoint_write_and_at_a_random_step_then_rerun_matches_an_uninterrupted_run(
    tmp_path, uninterrupted, seed
):
    workdir = tmp_path / "run"
    # Killed inside the write of the checkpoint at step 4 (a random kill rarely lands there).
    killed = subprocess.run(
        _train_command(workdir, KILL_OVERRIDES, program=(str(REPO / "tests/kill_worker.py"),)),
        env={**os.environ, "KILL_AT_CHECKPOINT": "4"},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    assert killed.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert "2" in names and "4" not in names
    assert any(name.startswith("4.orbax-checkpoint-tmp") for name in names), names

    # The rerun resumes from step 2 and is killed again once it has logged a seeded random step
    # past the 4 rows the first run left.
    logged = int(np.random.default_rng(seed).integers(5, 10))
    proc = subprocess.Popen(
        _train_command(workdir, KILL_OVERRIDES), stdout=subprocess.DEVNULL, cwd=REPO
    )
    deadline = time.time() + 300
    while len(metric_writer.read_metrics(workdir)) < logged:
        assert proc.poll() is None and time.time() < deadline, "finished before the kill"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    # The last rerun in-process (the CLI's resume is the second run above); saves an import.
    train.train_and_evaluate(load_config("vae.py:smoke", **KILL_OVERRIDES), workdir)

    _assert_same_state(uninterrupted, workdir_lib.load(workdir).state)
    steps = [row["step"] for row in metric_writer.read_metrics(workdir)]
    assert steps == list(range(1, 11))  # Each step once: rows past the resumed step dropped.
    leftovers = [p.name for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]
    assert leftovers == []  # The half-written folder was cleaned up.


@pytest.mark.slow
def test_a_full_disk_stops_the_run_naming_the_intact_checkpoint_and_a_rerun_resumes(
    tmp_path, uninterrupted, monkeypatch
):
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full_at_step_4(self):
        if self._final_path.name == "4":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await commit(self)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full_at_step_4)
    config = load_config("vae.py:smoke", **KILL_OVERRIDES)
    # The async save of step 4 fails in the background; the next save reports it.
    with pytest.raises(checkpoint.CheckpointSaveError, match=r"No space left.*step 2 is intact"):
        train.train_and_evaluate(config, tmp_path)
    monkeypatch.undo()  # Space freed.

    _assert_same_state(uninterrupted, train.train_and_evaluate(config, tmp_path))
    _assert_steps_logged_once(tmp_path)


# --- Damaged checkpoints ---


@pytest.fixture(scope="module")
def finished_run(vae_run):
    """A vae.py:smoke run of 6 steps with checkpoints at 3 and 6, and its final state."""
    return vae_run, workdir_lib.load(vae_run).state


def _truncate_arrays(step_dir):
    for path in (step_dir / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:5])


DAMAGES = {
    "truncated arrays": _truncate_arrays,
    "truncated metadata": lambda d: (d / "state/_METADATA").write_bytes(b'{"tree'),
    "missing data-iterator state": lambda d: shutil.rmtree(d / "data"),
}


# A failed restore leaves an orbax callback on a closed event loop; harmless.
QUIET_ORBAX = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.slow
@QUIET_ORBAX
@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_one_before_resumes(
    tmp_path, finished_run, damage, caplog
):
    source, final_state = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    DAMAGES[damage](workdir / "checkpoints/6")

    state = train.train_and_evaluate(load_config("vae.py:smoke"), workdir)

    _assert_same_state(final_state, state)  # Steps 4..6 redone from the checkpoint at 3.
    assert sorted(p.name for p in (workdir / "checkpoints/damaged").iterdir()) == ["6"]
    assert "The checkpoint at step 6" in caplog.text and "is damaged" in caplog.text
    _assert_steps_logged_once(workdir)
    # TensorBoard hides the events past step 3 of the first attempt: the resumed writer starts
    # its file with a session START at step 4.
    events = tensorboard_events(workdir / "tensorboard")
    starts = [e.step for e in events if e.session_log.status == event_pb2.SessionLog.START]
    assert starts[-1] == 4


@QUIET_ORBAX
def test_no_readable_checkpoint_names_the_directory_and_how_to_start_fresh(tmp_path, finished_run):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    for step in ("3", "6"):
        _truncate_arrays(workdir / "checkpoints" / step)

    with pytest.raises(checkpoint.NoReadableCheckpointError) as error:
        train.train_and_evaluate(load_config("vae.py:smoke"), workdir)
    damaged = workdir / "checkpoints/damaged"
    assert f"delete {damaged}" in str(error.value)
    assert sorted(p.name for p in damaged.iterdir()) == ["3", "6"]  # Moved, never deleted.
    # A read-only restore says so too, without moving anything.
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        workdir_lib.load(workdir)


def test_a_checkpoint_of_another_model_is_refused_naming_both_shapes(tmp_path, finished_run):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    config = load_config("vae.py:smoke", **{"model.latent_dim": 6})
    with pytest.raises(run_config.ConfigChangedError, match="model.latent_dim: 4 -> 6"):
        train.train_and_evaluate(config, workdir)

    # Even when the config change is allowed, the checkpoint's shapes are not this model's.
    with pytest.raises(checkpoint.ModelMismatchError) as error:
        train.train_and_evaluate(config, workdir, allow_config_change=True)
    message = str(error.value)
    assert "holds a different model" in message and "new --workdir" in message
    assert "(4,) there, (6,) here" in message or "(8, 4) there, (8, 6) here" in message, message
    assert not (workdir / "checkpoints/damaged").exists()  # Not taken for damage.


def test_a_checkpoint_of_another_process_count_is_refused_not_taken_for_damage(
    tmp_path, finished_run
):
    """grain keeps one data-iterator state per process: a run of 2 processes resumed by 1 finds
    no state of its own. It says so, and moves nothing to damaged/."""
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    for step in ("3", "6"):  # As two processes would have written them.
        data = workdir / "checkpoints" / step / "data"
        (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
        shutil.copy(data / "process_0-of-2.json", data / "process_1-of-2.json")
    with pytest.raises(checkpoint.ProcessCountError) as error:
        train.train_and_evaluate(load_config("vae.py:smoke"), workdir)
    message = str(error.value)
    assert "step 6" in message and "written by 2 process(es)" in message, message
    assert f"--config.init_from={workdir}:6" in message
    assert not (workdir / "checkpoints/damaged").exists()


@pytest.mark.slow
def test_a_resume_with_a_changed_config_is_refused_unless_allowed_and_recorded(
    tmp_path, finished_run
):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run[0], workdir)
    longer = {"train.total_steps": 8}

    with pytest.raises(run_config.ConfigChangedError) as error:
        faster = load_config("vae.py:smoke", **longer, **{"optim.lr": 1e-3})
        train.train_and_evaluate(faster, workdir)
    message = str(error.value)
    assert "optim.lr: 0.002 -> 0.001" in message and "--allow_config_change" in message
    assert "train.total_steps: 6" not in message  # A resume may run longer.

    state = train.train_and_evaluate(load_config("vae.py:smoke", **longer), workdir)
    assert int(state.step) == 8
    changed = load_config("vae.py:smoke", **{"train.total_steps": 9, "optim.lr": 1e-3})
    state = train.train_and_evaluate(changed, workdir, allow_config_change=True)
    assert int(state.step) == 9

    history = [json.loads(line) for line in (workdir / run_config.HISTORY_FILE).open()]
    assert [row["resumed_from_step"] for row in history] == [None, 6, 8]
    assert history[1]["changed"] == {"train.total_steps": [6, 8]}
    assert history[2]["changed"] == {"optim.lr": [0.002, 0.001], "train.total_steps": [8, 9]}
    assert json.loads((workdir / "config.json").read_text())["optim"]["lr"] == 0.001


def test_an_output_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "report.md"
    fileio.write_text(path, "old\n")
    with pytest.raises(OSError, match="No space left"), fileio.atomic_write(path) as f:
        f.write("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # No temporary file left.


# --- Metric logs ---


def test_a_torn_last_metrics_line_is_ignored_and_rows_past_the_resumed_step_dropped(tmp_path):
    rows = [{"step": s, "train/loss": 1.0 / s} for s in range(1, 6)]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / metric_writer.METRICS_FILE).write_text(text + '{"step": 6, "train/lo')

    assert metric_writer.read_metrics(tmp_path) == rows
    metric_writer.drop_rows_after(tmp_path, 3)
    assert metric_writer.read_metrics(tmp_path) == rows[:3]
    assert (tmp_path / metric_writer.METRICS_FILE).read_text().endswith("}\n")


def test_a_damaged_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    (tmp_path / metric_writer.METRICS_FILE).write_text('{"step": 1}\n{"ste\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not JSON"):
        metric_writer.read_metrics(tmp_path)


@pytest.mark.slow
def test_a_run_killed_before_its_best_checkpoint_evals_runs_them_on_rerun(tmp_path, vit_run):
    workdir = tmp_path / "run"
    shutil.copytree(vit_run, workdir)
    rows = metric_writer.read_metrics(workdir)
    (best_row,) = [row for row in rows if any(k.endswith("/checkpoint_step") for k in row)]
    without = "".join(json.dumps(row) + "\n" for row in rows if row is not best_row)
    (workdir / metric_writer.METRICS_FILE).write_text(without)  # Killed just before them.

    train.train_and_evaluate(load_config("vit.py:smoke"), workdir)

    rerun = metric_writer.read_metrics(workdir)
    assert len(rerun) == len(rows) and rerun[-1].keys() == best_row.keys()
    for key, value in best_row.items():
        np.testing.assert_allclose(rerun[-1][key], value, rtol=1e-6, err_msg=key)

    # Trained on past its end, the run evaluates its best checkpoint again at the new end.
    train.train_and_evaluate(load_config("vit.py:smoke", **{"train.total_steps": 7}), workdir)
    last = metric_writer.read_metrics(workdir)[-1]
    assert last["step"] == 7 and last.keys() == best_row.keys()


# --- Odd configs and a second writer ---


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.total_steps": -5}, r"train.total_steps=-5; it must be a whole number >= 1"),
        ({"train.log_every_steps": 0}, r"train.log_every_steps=0; it must be a whole number"),
        ({"train.batch_size": 12}, r"train.batch_size=12 must divide evenly over 8 devices"),
        ({"data.image_size": 10}, r"image_size=10 must be divisible by 2\*\*len\(channels\)=4"),
    ],
)
def test_a_config_value_out_of_range_fails_before_training_naming_it(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.train_and_evaluate(load_config("vae.py:smoke", **overrides), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_a_unet_refuses_an_image_size_its_levels_cannot_halve(tmp_path):
    config = load_config("ddpm.py:smoke", **{"data.image_size": 7})  # Two levels: needs even.
    with pytest.raises(ValueError, match=r"Image size 7x7 is not a multiple of 2, which "):
        train.train_and_evaluate(config, tmp_path)


def test_a_config_value_of_the_wrong_type_is_refused_naming_the_field():
    with pytest.raises(TypeError, match="'log_every_steps'.*often.*cannot be casted"):
        load_config("vae.py:smoke", **{"train.log_every_steps": "often"})


def test_a_second_training_run_on_one_workdir_fails_clearly(tmp_path):
    with (
        fileio.exclusive_lock(tmp_path / train.LOCK_FILE, "training run"),
        pytest.raises(FileExistsError, match=r"Another training run is writing .*pid \d+"),
    ):
        train.train_and_evaluate(load_config("vae.py:smoke"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_every_row_of_docs_reliability_names_tests_that_exist():
    rows = [line for line in (REPO / "docs/reliability.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| fault", "|---"))]  # fmt: skip
    files = list((REPO / "tests").rglob("test_*.py"))
    known = {p.stem for p in files} | {
        name for p in files for name in re.findall(r"^def (test_\w+)", p.read_text(), re.M)
    }
    assert len(rows) >= 25
    for row in rows:
        named = re.findall(r"\btest_\w+", row.rsplit(" | ", 1)[-1])
        assert named, f"no test named in: {row}"
        assert set(named) <= known, (sorted(set(named) - known), row)
