"""`ham-synth classify`: a folder of images -> a CSV whose probabilities are the evaluator's."""

import csv
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, load_config
from PIL import Image

from ham_synth import parallel, predict, workdir
from ham_synth.data import sources
from ham_synth.evaluators import classification


def test_classify_writes_the_evaluators_probabilities_and_names_a_bad_image(vit_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(vit_run, run_dir)  # It writes predictions/ into the run.
    # The test split as PNGs (lossless), one sub-folder per class name, plus a corrupt file.
    restored = workdir.load(run_dir, "best")
    test_data = restored.config.copy_and_resolve_references()
    test_data.data.split = "test"
    source = sources.get_source(test_data.data)
    images = tmp_path / "new images"
    for i in range(len(source)):
        folder = images / f"class_{source.labels[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(source[i]["image"]).save(folder / f"{i:04d}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")

    default = predict.run(str(run_dir), str(images))
    assert default == run_dir / "predictions" / "new images.csv"
    out = predict.run(str(run_dir), str(images), out_csv=str(tmp_path / "p.csv"))
    assert out.read_text() == default.read_text()
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(source) + 1
    broken = next(r for r in rows if r["path"] == "broken.jpg")
    assert "cannot decode the image" in broken["error"] and broken["predicted"] == ""

    mesh = parallel.make_mesh()
    evaluator = classification.ClassificationEvaluator(
        name="test", config=restored.config, task=restored.task, mesh=mesh, workdir=run_dir,
        split="test",
    )  # fmt: skip
    expected = evaluator.probabilities(restored.state)
    names = restored.config.data.class_names.split(",")
    for row in rows:
        if row["error"]:
            continue
        index = int(row["path"].split("/")[1].removesuffix(".png"))
        probs = np.array([float(row[f"p_{name}"]) for name in names])
        np.testing.assert_allclose(probs, expected[index], atol=2e-6)
        assert row["predicted"] == names[int(np.argmax(expected[index]))]


def test_the_default_csv_is_named_after_the_folder_even_when_given_as_a_dot(tmp_path, monkeypatch):
    (tmp_path / "site_b").mkdir()
    monkeypatch.chdir(tmp_path / "site_b")
    assert predict.default_csv("run", pathlib.Path(".")) == pathlib.Path(
        "run/predictions/site_b.csv"
    )


def test_classify_refuses_a_generator_run_and_an_empty_folder(tmp_path):
    run_dir = tmp_path / "vae"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(load_config("vae.py:smoke").to_json())
    with pytest.raises(ValueError, match="trained the 'vae' family; a classifier run"):
        predict.run(str(run_dir), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No .png or .jpg images under"):
        predict.find_images(tmp_path / "vae")


def test_operating_points_at_tau_0_are_the_evaluators_and_an_ensemble_of_copies_is_the_run(
    vit_run, tmp_path
):
    """tools/operating_points.py on the run twice over (an ensemble of two equal members, whose
    mean softmax is the run's own): at tau 0 it scores the best checkpoint as evals.test did."""
    out = tmp_path / "points.json"
    tool = REPO / "tools" / "operating_points.py"
    command = [sys.executable, str(tool), f"--workdir={vit_run},{vit_run}", f"--out={out}",
               "--taus=0,1", "--splits=test", "--prior=stream"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, text=True)
    points = json.loads(out.read_text())
    metrics = [json.loads(line) for line in (vit_run / "metrics.jsonl").read_text().splitlines()]
    logged = next(m for m in metrics if "test/balanced_accuracy" in m)
    assert points["steps"] == [logged["test/checkpoint_step"]] * 2 and points["prior"] == "stream"
    at_zero = points["rows"][0]
    assert at_zero["tau"] == 0
    for key in ("test/balanced_accuracy", "test/accuracy"):
        assert at_zero[key] == pytest.approx(logged[key], abs=1e-6)
    assert points["test/roc_auc_macro"] == pytest.approx(logged["test/roc_auc_macro"], abs=1e-4)
