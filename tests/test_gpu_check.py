"""tools/gpu_check.sh --tiny end to end (tools/benchmark.py at its tiny shapes, then the smoke
mini-study, then tools/gpu_report.py): the tables' structure, JAX and PyTorch parameter counts
that agree (the same architecture on both sides), MFU and the study's change from their closed
forms; never speed."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import FAST_COMPILE, REPO

# Checked, not imported: timm would load torchvision's CUDA-only modules, which the tool stubs.
PEERS = ("torch", "diffusers", "timm", "pytorch_fid")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in PEERS),
    reason=f"tools/benchmark.py needs the test extra's {PEERS}",
)


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """The script's output folder, after one --tiny run on one CPU device."""
    out = tmp_path_factory.mktemp("out")
    work = tmp_path_factory.mktemp("work")
    env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE))
    subprocess.run(
        [str(REPO / "tools" / "gpu_check.sh"), "--tiny", f"--out={out}", f"--work={work}"],
        check=True, env=env, timeout=400,
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_benchmark_rows_match_their_peers_and_closed_forms(gpu_check):
    results = json.loads((gpu_check / "gpu_check.json").read_text())["benchmark"]
    rows = results["rows"]
    assert not [row for row in rows if row["side"] == "failed"]
    assert {row["case"] for row in rows} == {
        "ddpm train step", "ddpm train step, batch 4, 2 steps per call", "vit train step",
        "inception features 32px", "sample ddim-2", "sample dpmpp_2m-2", "input pipeline 64px",
    }  # fmt: skip
    peak = results["matmul_peak_flops"]["float32"]
    for case in ("ddpm train step", "vit train step", "inception features 32px"):
        jax_row, peer = [row for row in rows if row["case"] == case]
        assert jax_row["side"] == "JAX"
        assert abs(jax_row["params"] - peer["params"]) <= 0.05 * peer["params"], case
        assert jax_row["vs_peer"] == pytest.approx(peer["step_ms"] / jax_row["step_ms"])
        for row in (jax_row, peer):
            assert row["step_ms"] > 0 and row["compile_s"] > 0
            low, high = row["spread_ms"]
            assert low <= row["step_ms"] <= high
        # MFU: the JAX step's XLA FLOPs over its time and the measured matmul peak.
        expected = jax_row["flops"] / (jax_row["step_ms"] / 1e3) / peak
        assert jax_row["mfu"] == pytest.approx(expected)
    # Two steps per call: twice the images and twice one step's FLOPs.
    (one,) = [r for r in rows if r["case"] == "ddpm train step" and r["side"] == "JAX"]
    (two,) = [r for r in rows if r["case"].endswith("2 steps per call")]
    assert two["images_per_call"] == 2 * one["images_per_call"]
    assert two["flops"] == pytest.approx(2 * one["flops"], rel=0.02)
    pipeline = {r["side"] for r in rows if r["case"].startswith("input pipeline")}
    assert pipeline == {
        f"grain ({source}), {workers} workers"
        for source in ("folder JPEGs", "prepared ArrayRecord")
        for workers in sorted({0, 1, max(1, os.cpu_count() - 1)})
    }
    assert results["environment"]["versions"]["jax"]
    table = (gpu_check / "bench" / "results.md").read_text()
    assert table.count("\n| ") == len(rows) + 1  # One line per row, plus the header.


@pytest.mark.slow
def test_mini_study_compares_real_plus_ddpm_with_real(gpu_check):
    study = json.loads((gpu_check / "gpu_check.json").read_text())["study"]
    conditions = study["conditions"]
    assert list(conditions) == ["real", "real+ddpm"]
    assert all(c["seeds"] == 1 and 0 <= c["balanced_accuracy"] <= 1 for c in conditions.values())
    # One seed: the change is the difference itself, with no interval.
    change = study["changes"]["real+ddpm"]
    difference = (
        conditions["real+ddpm"]["balanced_accuracy"] - conditions["real"]["balanced_accuracy"]
    )
    assert change["control"] == "real" and change["mean"] == pytest.approx(difference)
    assert {"generators/ddpm", "synthetic/ddpm", "classifiers/real/seed_0"} <= set(study["minutes"])
    tables = (gpu_check / "gpu_check.md").read_text()
    assert "## Benchmark" in tables and "## Mini-study" in tables
    assert "| real+ddpm | 1 |" in tables and "(no results" not in tables
    kept = sorted(p.name for p in gpu_check.iterdir())
    assert kept == ["bench", "gpu_check.json", "gpu_check.log", "gpu_check.md", "study_report.md"]
    assert sorted(p.name for p in (gpu_check / "bench").iterdir()) == ["results.json", "results.md"]
    log = (gpu_check / "gpu_check.log").read_text()
    assert "[gpu_check] preflight: exit 0" in log and "jax backend cpu" in log


def test_the_report_keeps_one_part_when_the_other_is_unreadable(tmp_path):
    """A results file cut off mid-write (or any unreadable part) is named in the report, and the
    other part's results are still written."""
    bench = tmp_path / "results.json"
    bench.write_text('{"rows": [')
    study = tmp_path / "study"  # No report.json: the study did not get that far.
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_report.py"), f"--bench={bench}",
         f"--study={study}", f"--out={tmp_path / 'out'}"],
        check=True, capture_output=True,
    )  # fmt: skip
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert results["benchmark"]["error"].startswith(f"{bench}: JSONDecodeError")
    assert results["study"] is None
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "## Benchmark\n\n(unreadable: " in text and "## Mini-study\n\n(no results" in text
