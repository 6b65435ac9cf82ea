"""The launch scripts parse, and the SLURM script's dry run prints the srun line it would run."""

import os
import shlex
import subprocess

import pytest

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
