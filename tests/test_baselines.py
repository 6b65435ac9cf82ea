"""tools/baseline_resnet.py, the CNN peer a classifier's targets are read against."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("torch")

# The tool defines absl flags at import, as other modules do: it is imported in a process of its
# own, not in the test worker.
STAGE_SIZES = """
import sys, torch
sys.path.insert(0, "tools")
import baseline_resnet
model = baseline_resnet.resnet18_cifar_stem(num_classes=7, channels=3).eval()
sizes = []
for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
    stage.register_forward_hook(lambda module, inputs, output: sizes.append(output.shape[-1]))
with torch.no_grad():
    logits = model(torch.zeros(2, 3, 28, 28))
print(*sizes, *logits.shape)
"""


def test_the_cifar_stem_keeps_full_resolution_into_the_first_stage():
    """MedMNIST's 28² ResNet-18: stages at 28, 14, 7 and 4 pixels, one logit per class."""
    out = subprocess.run([sys.executable, "-c", STAGE_SIZES], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    assert out.split() == ["28", "14", "7", "4", "2", "7"]


@pytest.mark.slow
def test_baseline_resnet_scores_its_best_epoch_as_the_evaluator_does(tmp_path):
    """Two epochs on the quickstart's digits: the kept epoch is the one with the best val AUC,
    and the tau-0 row of the logit-adjustment table is the evaluator's accuracy and balanced
    accuracy at that epoch."""
    out = tmp_path / "resnet.json"
    command = [sys.executable, str(REPO / "tools" / "baseline_resnet.py"),
               f"--config={REPO / 'configs' / 'vit.py'}:quickstart", "--epochs=2",
               "--taus=0,1", f"--out={out}"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=tmp_path)
    result = json.loads(out.read_text())
    aucs = [row["val/roc_auc_macro"] for row in result["log"]]
    assert len(aucs) == 2 and result["best_epoch"] == 1 + int(np.argmax(aucs))
    assert result["val"]["roc_auc_macro"] == pytest.approx(max(aucs), abs=1e-6)
    at_zero = result["rows"][0]
    for split in ("val", "test"):
        for key in ("accuracy", "balanced_accuracy"):
            assert at_zero[f"{split}/{key}"] == pytest.approx(result[split][key], abs=1e-9)
