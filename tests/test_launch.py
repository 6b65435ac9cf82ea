"""The launch scripts parse, the SLURM script's dry run prints the srun line it would run, and
two processes joined by jax.distributed stop together."""

import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import pytest
from conftest import FAST_COMPILE, free_port

from ham_synth import config_lib, main, metric_writer
from ham_synth.study import plan as plan_lib

SCRIPTS = ("run_local.sh", "run_multihost.sh", "slurm.sbatch")


@pytest.mark.parametrize("script", SCRIPTS)
def test_launch_script_parses(repo, script):
    subprocess.run(["bash", "-n", str(repo / "launch" / script)], check=True)


def test_slurm_dry_run_prints_one_task_per_node_and_passes_arguments_through(repo):
    env = dict(os.environ, DRY_RUN="1", SLURM_JOB_NUM_NODES="4")
    out = subprocess.run(
        ["bash", str(repo / "launch" / "slurm.sbatch"), "configs/ddpm.py:ham64",
         "/shared/runs/my ddpm", "--config.train.batch_size=256"],
        check=True, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert shlex.split(out) == [
        "srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
        "ham-synth", "train", "--config=configs/ddpm.py:ham64", "--workdir=/shared/runs/my ddpm",
        "--config.train.batch_size=256",
    ]  # fmt: skip


def test_slurm_script_without_arguments_prints_usage(repo):
    result = subprocess.run(
        ["bash", str(repo / "launch" / "slurm.sbatch")], capture_output=True, text=True
    )
    assert result.returncode == 2 and "usage:" in result.stderr


def test_run_local_passes_config_workdir_and_overrides_to_train(repo, tmp_path):
    """launch/run_local.sh with a stand-in ham-synth that prints its argv; no arguments: usage."""
    (tmp_path / "ham-synth").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    (tmp_path / "ham-synth").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    script = str(repo / "launch" / "run_local.sh")
    out = subprocess.run([script, "configs/vae.py:quickstart", "runs/a b", "--config.seed=3"],
                         env=env, check=True, capture_output=True, text=True).stdout  # fmt: skip
    assert out.splitlines() == ["train", "--config=configs/vae.py:quickstart",
                                "--workdir=runs/a b", "--config.seed=3"]  # fmt: skip
    usage = subprocess.run([script], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def _sweep(repo, tmp_path, *args):
    env = dict(os.environ, HAM_SYNTH_CACHE_DIR=str(tmp_path / "cache"))
    return subprocess.run(
        [sys.executable, "launch/sweep.py", f"--workdir={tmp_path / 'w'}", "--dry_run", *args],
        cwd=repo, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip


@pytest.mark.slow
def test_sweep_dry_run_prints_every_run_of_a_study(repo, tmp_path):
    out = _sweep(repo, tmp_path, "--config=configs/study.py:quickstart")
    commands = [line for line in out.splitlines() if line.startswith("ham-synth ")]
    assert len(commands) == 3 + 3 + 3 + 1 + 6 + 3 * 5 + 3  # Every run but the report.
    assert "# generators: 3 run(s)" in out and "# memorization: 3 run(s)" in out
    assert "# filtered: 1 run(s)" in out
    assert commands[0].startswith("ham-synth train --config=configs/ddpm.py:quickstart")


@pytest.mark.slow
def test_a_study_on_slurm_runs_each_run_through_the_study_then_the_report(repo, tmp_path):
    out = _sweep(repo, tmp_path, "--config=configs/study.py:smoke", "--mode=slurm",
                 "--config.seeds.classifiers=1")  # fmt: skip
    assert "--array=0-2 " in out  # generators: ddpm, gan, vae
    report = shlex.split(out.splitlines()[-1].split("--wrap=", 1)[1])[0]
    assert shlex.split(report) == [
        "ham-synth", "study", "--config=configs/study.py:smoke", "--config.seeds.classifiers=1",
        f"--workdir={tmp_path / 'w'}", "--only=report",
    ]  # fmt: skip


@pytest.mark.slow
def test_sweep_of_a_training_config_writes_a_slurm_array_per_stage(repo, tmp_path):
    out = _sweep(repo, tmp_path, "--config=configs/vae.py:smoke", "--mode=slurm",
                 "--sweep=optim.lr=0.001,0.0003;seed=0,1")  # fmt: skip
    commands = [shlex.split(line) for line in out.splitlines() if line.startswith("ham-synth ")]
    assert [c[3:5] for c in commands] == [
        ["--config.optim.lr=0.001", "--config.seed=0"],
        ["--config.optim.lr=0.001", "--config.seed=1"],
        ["--config.optim.lr=0.0003", "--config.seed=0"],
        ["--config.optim.lr=0.0003", "--config.seed=1"],
    ]
    assert "--array=0-3" in out and "launch/slurm.sbatch --commands=" in out


@pytest.mark.slow
def test_slurm_submission_starts_jobs_where_configs_resolve_and_after_their_dependencies(
    repo, tmp_path, monkeypatch
):
    """submit.sh, run from elsewhere with a stand-in sbatch, submits from the directory sweep.py
    ran in (where the runs' relative config paths resolve), and every run's job array comes
    after those of the runs it depends on (the smoke study pre-trains, then fine-tunes)."""
    env = dict(os.environ, HAM_SYNTH_CACHE_DIR=str(tmp_path / "cache"))
    workdir = tmp_path / "w"
    subprocess.run(
        [sys.executable, "launch/sweep.py", "--config=configs/study.py:smoke", "--mode=slurm",
         f"--workdir={workdir}"],
        cwd=repo, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$PWD|$*" >> {log}\necho 7\n')
    (bin_dir / "sbatch").chmod(0o755)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    subprocess.run(["bash", str(workdir / "slurm" / "submit.sh")], cwd=tmp_path, env=env,
                   check=True, capture_output=True)  # fmt: skip
    calls = [line.split("|", 1) for line in log.read_text().splitlines()]
    assert {cwd for cwd, _ in calls} == {str(repo)}
    group_of = {}  # Run name -> index of the job array that runs it.
    for group, (_, argv) in enumerate(calls[:-1]):
        commands = pathlib.Path(argv.split("--commands=")[1])
        for line in commands.read_text().splitlines():
            group_of[line.split("--run=")[1]] = group
    assert "--only=report" in calls[-1][1]
    monkeypatch.setenv("HAM_SYNTH_CACHE_DIR", env["HAM_SYNTH_CACHE_DIR"])
    monkeypatch.chdir(repo)
    plan = plan_lib.make_plan(config_lib.load_config("configs/study.py:smoke"), workdir)
    runs = [run for run in plan if run.verb != "report"]
    assert sorted(group_of) == sorted(run.name for run in runs)
    stage_of = {run.name: run.stage for run in runs}
    assert any(stage_of[dep] == run.stage for run in runs for dep in run.deps)
    for run in runs:
        for dep in run.deps:
            assert group_of[dep] < group_of[run.name], (dep, run.name)


@pytest.mark.parametrize(("trainer_status", "requeued"), [(75, True), (143, True), (1, False)])
def test_near_the_time_limit_the_tasks_stop_then_the_job_requeues(
    repo, tmp_path, trainer_status, requeued
):
    """SIGUSR1 to the batch shell (SLURM's warning before the limit): SLURM is asked to send the
    tasks SIGTERM (scancel), not srun, which as SLURM's does turns a SIGTERM into SIGKILL for
    its tasks; the job is requeued after the task exits as stopped (75) or of the signal (143),
    never before, and not when it failed. srun, scancel, scontrol and the task are stand-ins
    that log what they see."""
    log, bin_dir, task_pid = tmp_path / "log", tmp_path / "bin", tmp_path / "task.pid"
    bin_dir.mkdir()
    scripts = {
        "srun": 'while [ "${1#--}" != "$1" ]; do shift; done\n'
                f'"$@" & child=$!\necho $child > {task_pid}\n'
                "trap 'kill -KILL $child' TERM\nwait $child",
        "ham-synth": f"trap 'echo stopped >> {log}; exit {trainer_status}' TERM\n"
                     f"echo started >> {log}\nwhile true; do sleep 0.05; done",
        "scancel": f'echo "scancel $*" >> {log}\nkill -TERM "$(cat {task_pid})"',
        "scontrol": f'echo "scontrol $*" >> {log}',
    }  # fmt: skip
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="42")
    job = subprocess.Popen(["bash", str(repo / "launch" / "slurm.sbatch"), "c.py:x", "w"],
                           env=env, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (log.exists() and "started" in log.read_text() and task_pid.exists()):
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=30) == trainer_status, job.stderr.read()
    expected = ["started", "scancel --signal=TERM 42", "stopped"]
    assert log.read_text().splitlines() == expected + (["scontrol requeue 42"] * requeued)


def test_slurm_array_mode_runs_one_line_of_the_commands_file(repo, tmp_path):
    commands = tmp_path / "train.commands"
    commands.write_text(
        "ham-synth train --config=a.py --workdir=/w/one\n"
        "ham-synth sample --workdir='/w/two words' --num_per_class=akiec=5,df=7\n"
    )
    env = dict(os.environ, DRY_RUN="1", SLURM_ARRAY_TASK_ID="1")
    out = subprocess.run(
        ["bash", str(repo / "launch" / "slurm.sbatch"), f"--commands={commands}"],
        check=True, env=env, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert shlex.split(out)[5:] == [
        "ham-synth", "sample", "--workdir=/w/two words", "--num_per_class=akiec=5,df=7"
    ]  # fmt: skip


@pytest.mark.slow
def test_two_processes_stop_at_one_step_when_one_receives_sigterm(repo, tmp_path):
    """launch/run_multihost.sh on 2 CPU processes (1 device each, joined by jax.distributed).
    SIGTERM reaches process 1 only, as when one node is preempted: JAX's preemption sync point
    carries it to process 0, both checkpoint the same step and exit as stopped."""
    port = free_port()
    workdir = tmp_path / "run"
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(FAST_COMPILE),  # One device each.
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "COORDINATOR": f"localhost:{port}",
        "NUM_HOSTS": "2",
    }
    overrides = {
        "train.total_steps": 100_000,
        "train.batch_size": 4,
        "train.log_every_steps": 1,
        "train.ckpt_every_steps": 10_000,
        "evals.samples.every_steps": 10_000,
    }
    command = [
        "bash",
        str(repo / "launch" / "run_multihost.sh"),
        "configs/vae.py:smoke",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in overrides.items()],
    ]
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    jobs = [
        subprocess.Popen(
            command,
            env={**env, "HOST_ID": str(i)},
            cwd=repo,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.time() + 240
        while len(metric_writer.read_metrics(workdir)) < 3:
            assert all(job.poll() is None for job in jobs), [log.read_text() for log in logs]
            assert time.time() < deadline, [log.read_text() for log in logs]
            time.sleep(0.2)
        jobs[1].send_signal(signal.SIGTERM)
        codes = [job.wait(timeout=120) for job in jobs]
    finally:
        for job in jobs:
            job.kill()

    outs = [log.read_text() for log in logs]
    assert codes == [main.EXIT_STOPPED] * 2, outs
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(saved) == 1 and 3 <= saved[0] < 10_000, saved
    for out in outs:
        assert f"Stopped at step {saved[0]}" in out, out
