"""tools/benchmark.py end to end at its tiny shapes: the table's structure, and JAX and PyTorch
parameter counts that agree (the same architecture on both sides), never speed."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import FAST_COMPILE

# Checked, not imported: timm would load torchvision's CUDA-only modules, which the tool stubs.
PEERS = ("torch", "diffusers", "timm", "pytorch_fid")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in PEERS),
    reason=f"tools/benchmark.py needs the test extra's {PEERS}",
)


@pytest.mark.slow
def test_benchmark_writes_side_by_side_table_with_matching_parameter_counts(repo, tmp_path):
    # One CPU device, as a user's run, with the suite's cheap compiles (speed is not checked).
    env = dict(os.environ, XLA_FLAGS=" ".join(FAST_COMPILE))
    subprocess.run(
        [sys.executable, str(repo / "tools" / "benchmark.py"), "--preset=tiny", "--repeats=1",
         f"--out_dir={tmp_path}"],
        check=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    results = json.loads((tmp_path / "results.json").read_text())
    rows = results["rows"]
    cases = {row["case"] for row in rows}
    assert cases == {
        "ddpm train step", "vit train step", "inception features 32px", "sample ddim-2",
        "sample dpmpp_2m-2", "input pipeline 8px",
    }  # fmt: skip
    assert not [row for row in rows if row["side"] == "failed"]
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
        peak = results["matmul_peak_flops"]["float32"]
        expected = jax_row["flops"] / (jax_row["step_ms"] / 1e3) / peak
        assert jax_row["mfu"] == pytest.approx(expected)
    assert results["environment"]["versions"]["jax"]
    table = (tmp_path / "results.md").read_text()
    assert "| case | side | dtype | params |" in table
    assert table.count("\n| ") == len(rows) + 1  # One line per row, plus the header.
