"""The `ham-synth` command line, run as a user would: verbs, config typos, SIGTERM and Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import load_config

from ham_synth import main, metric_writer, train


def _ham_synth(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "ham_synth.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_unknown_verb_lists_the_verbs():
    out, _ = _ham_synth("trian").communicate(timeout=120)
    assert "Unknown verb 'trian'" in out and "train" in out.split("verbs:")[1]


# What `ham-synth` with no verb used to import before printing its usage (6-7 s).
HEAVY_MODULES = ("jax", "tensorflow_datasets", "sklearn", "tensorboardX", "torch", "orbax", "grain")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "verbs:"),
        (["trian"], "Unknown verb 'trian'"),
        (["train", "--bogus=1"], "Unknown command line flag 'bogus'"),
        (["train", "--workdir=w"], "--config required"),
        (["sample", "--config=configs/vae.py:smoke", "--config.train.totl_steps=5"],
         'Did you mean "total_steps"'),
    ],
)  # fmt: skip
def test_usage_and_flag_errors_answer_without_importing_a_verbs_modules(repo, argv, says):
    code = (
        "import sys\n"
        "from ham_synth import main\n"
        f"sys.argv = ['ham-synth', *{argv!r}]\n"
        "try:\n    main.run()\nexcept SystemExit as stop:\n    code = stop.code\n"
        f"print('loaded', sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules), code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=repo, timeout=120
    )
    assert says in out.stderr, out.stderr
    assert out.stdout.strip() == "loaded [] 2", out.stdout + out.stderr


@pytest.mark.slow
def test_config_typo_fails_naming_the_field(tmp_path, repo):
    proc = _ham_synth(
        "train",
        f"--config={repo}/configs/vae.py:smoke",
        f"--workdir={tmp_path}",
        "--config.train.totl_steps=5",
        cwd=repo,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in out
    assert "override --config.train.totl_steps=5: the config has no field 'totl_steps'" in out
    assert 'Did you mean "total_steps" instead of "totl_steps"' in out
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("error", "says"),
    [
        # ml_collections' error for a field with a near name, nested as it raises it.
        (AttributeError(KeyError("'totl_steps'\nDid you mean \"total_steps\"?")),
         "config override --config.train.totl_steps=5: the config has no field 'totl_steps'\n"
         'Did you mean "total_steps"?'),
        # No near name: the flag and the field, and nothing else.
        (KeyError("'val_every'"),
         "config override --config.val_every=5: the config has no field 'val_every'"),
        # A field no flag names (e.g. read inside the config file): no flag is blamed.
        (KeyError("'stem'"), "config override: the config has no field 'stem'"),
    ],
)  # fmt: skip
def test_a_missing_field_names_its_flag_and_the_field(error, says):
    argv = ["ham-synth", "--config=c.py", "--config.train.totl_steps=5", "--config.val_every=5"]
    assert main._missing_field_message(error, argv) == says


@pytest.mark.slow
def test_user_errors_exit_2_with_one_message_and_no_traceback(tmp_path, repo):
    proc = _ham_synth("prepare", "--source=ham10000", "--manual_dir=/nonexistent", cwd=repo)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "Traceback" not in out and "--manual_dir=/nonexistent is not a folder" in out

    proc = _ham_synth("sample", f"--workdir={tmp_path}", "--num_per_class=2", cwd=repo)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in out
    assert f"is {tmp_path} the --workdir of a `ham-synth train` run?" in out

    # A config file that is not there: one line (it was an OSError traceback).
    proc = _ham_synth(
        "train", "--config=configs/nosuch.py:smoke", f"--workdir={tmp_path}", cwd=repo
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in out
    assert "no config file at configs/nosuch.py" in out

    # --traceback shows where.
    proc = _ham_synth("sample", f"--workdir={tmp_path}", "--num_per_class=2", "--traceback")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "Traceback" in out

    # A flag the verb does not take is refused, naming it.
    proc = _ham_synth("sample", f"--workdir={tmp_path}", "--num_per_class=2", "--fake_dir=x")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--fake_dir do(es) not apply to `sample`" in out


def test_sigterm_and_one_ctrl_c_ask_to_stop_a_second_ctrl_c_interrupts_and_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for signum in before:
        with train._StopRequest() as stop:
            assert signal.getsignal(signum) == stop._handle  # Else the kill below is fatal.
            assert not stop.should_stop(1)
            os.kill(os.getpid(), signum)
            assert stop.should_stop(1)
            if signum == signal.SIGINT:
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signum)
        assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.slow
def test_a_stop_signal_checkpoints_exits_cleanly_and_the_run_resumes(tmp_path, repo):
    # SIGTERM end to end; SIGINT takes the same handler (the test above).
    overrides = {
        "train.total_steps": 100_000,
        "train.log_every_steps": 1,
        "train.ckpt_every_steps": 10_000,
        "evals.samples.every_steps": 10_000,
        "optim.schedule_steps": 6,  # vae.py:smoke's own schedule: its compiled step is cached.
    }
    proc = _ham_synth(
        "train",
        f"--config={repo}/configs/vae.py:smoke",
        f"--workdir={tmp_path}",
        *[f"--config.{k}={v}" for k, v in overrides.items()],
        cwd=repo,
    )
    deadline = time.time() + 180
    while len(metric_writer.read_metrics(tmp_path)) < 3:
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)

    assert proc.returncode == main.EXIT_STOPPED, out  # Not 0: the run is not finished.
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(saved) == 1 and 3 <= saved[0] < 10_000, saved
    assert f"Stopped at step {saved[0]}" in out

    # Running on resumes from that step.
    config = load_config("vae.py:smoke", **{**overrides, "train.total_steps": saved[0] + 2})
    state = train.train_and_evaluate(config, tmp_path)
    assert int(state.step) == saved[0] + 2
    steps = [row["step"] for row in metric_writer.read_metrics(tmp_path)]
    assert steps[-2:] == [saved[0] + 1, saved[0] + 2]
    assert np.isfinite(metric_writer.read_metrics(tmp_path)[-1]["train/loss"])


def test_a_config_file_error_is_its_last_line_not_the_traceback_in_the_flag_message():
    message = (
        "flag --config=configs/vit.py:nosuch: Error whilst parsing config file:\n\nTraceback "
        '(most recent call last):\n  File "configs/vit.py", line 114, in get_config\n'
        "ValueError: Unknown config arg 'nosuch'"
    )
    assert main._without_traceback(message) == (
        "flag --config=configs/vit.py:nosuch: Error whilst parsing config file: "
        "ValueError: Unknown config arg 'nosuch'"
    )
    assert main._without_traceback("plain") == "plain"
