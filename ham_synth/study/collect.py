"""What the study's runs left, read back for its report: each classifier run's test metrics and
training stream, and each synthetic set's realism and memorization files."""

import csv
import json
import os
import pathlib

import numpy as np

from ham_synth import config_lib, evaluators, memorization, metric_writer, synthesize
from ham_synth.evaluators import recognition
from ham_synth.study import plan as plan_lib


def final_evaluator(workdir: pathlib.Path, kind: str) -> str | None:
    """The name of a classifier run's `kind` evaluator that runs once at the end on the best
    checkpoint (vit.py's `test` and `attention`), from the run's config.json; None if it has
    none."""
    config = config_lib.load_workdir_config(workdir)
    names = [
        name
        for name, entry in config.evals.items()
        if entry.type == kind and entry.every_steps == 0 and entry.get("checkpoint") == "best"
    ]
    if len(names) > 1:
        raise ValueError(
            f"{workdir}: the report reads one {kind!r} evaluator run at the end on the best "
            f"checkpoint (every_steps=0, checkpoint='best'); the run's config has {names}."
        )
    return names[0] if names else None


def test_metrics(workdir: pathlib.Path) -> dict:
    """{"file", "step", "checkpoint_step", "metrics": {name: value}} from the last row of a
    classifier run's metrics.jsonl that holds its final classification evaluator's results."""
    name = final_evaluator(workdir, "classification")
    if name is None:
        raise ValueError(
            f"{workdir}'s config has no classification evaluator run at the end on the best "
            "checkpoint (as vit.py's evals.test); the report has no test metrics to read."
        )
    rows = [r for r in metric_writer.read_metrics(workdir) if f"{name}/accuracy" in r]
    if not rows:
        raise FileNotFoundError(
            f"{workdir / metric_writer.METRICS_FILE} has no {name}/* row: did the run finish "
            "its final evaluation?"
        )
    row = rows[-1]
    prefix = f"{name}/"
    checkpoint_step = row.get(f"{name}/checkpoint_step", row["step"])
    evals_json = workdir / evaluators.EVALS_DIR / name / f"step_{int(checkpoint_step):07d}.json"
    subgroups = None
    if evals_json.exists():
        subgroups = json.loads(evals_json.read_text()).get("subgroups")
    return {
        "file": str(workdir / metric_writer.METRICS_FILE),
        "step": row["step"],
        "checkpoint_step": checkpoint_step,
        "subgroups": subgroups,  # {attribute: {value: {n, balanced_accuracy}}} when recorded.
        "metrics": {
            k[len(prefix) :]: v
            for k, v in row.items()
            if k.startswith(prefix) and k != f"{name}/checkpoint_step"
        },
    }


def collect(plan: list[plan_lib.Run], root: pathlib.Path) -> dict:
    """condition -> [per-seed test_metrics], seeds in order."""
    results = {}
    for run in plan:
        if run.base_name.startswith("classifiers/"):
            condition = run.base_name.split("/")[1]
            results.setdefault(condition, []).append(test_metrics(root / run.name))
    return results


def recognised(csv_path: pathlib.Path, reference: pathlib.Path, mixed: list[str]) -> dict:
    """The recognised share (evaluators/recognition.py) of the images of a set's `mixed` classes
    (those the real + synthetic conditions train on), from a `ham-synth classify` CSV of the set,
    beside the reference classifier's per-class recall on real test images; the set's other
    images (made for the synthetic-only condition alone) are scored apart, under "tstr_only"."""
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    class_names = config_lib.class_names(config_lib.load_workdir_config(reference))
    metrics = test_metrics(reference)["metrics"]
    ceiling = {c: metrics.get(f"{c}/recall") for c in class_names}
    conditioned = [r["path"].split("/")[0] for r in rows]  # The class folder it was made for.
    predicted = [r["predicted"] for r in rows]

    def share(keep):
        picked = [i for i, c in enumerate(conditioned) if (c in mixed) == keep]
        if not picked:
            return None
        return recognition.recognised_share(
            [conditioned[i] for i in picked], [predicted[i] for i in picked], ceiling
        )

    return {"file": str(csv_path), **(share(True) or {}), "tstr_only": share(False)}


def collect_realism(plan: list[plan_lib.Run], root: pathlib.Path, mixed: list[str]) -> dict:
    """generator -> {"classifier": metrics.json, "inception": metrics.json (when run),
    "recognised"}; `mixed`: the classes the real + synthetic conditions take from each set."""
    realism = {}
    for run in plan:
        if not run.base_name.startswith("realism/"):
            continue
        _, generator, kind = run.base_name.split("/")
        if kind == "recognised":
            reference = pathlib.Path(plan_lib.resolve(run.flags["workdir"], root))
            entry = recognised(root / run.name / "predictions.csv", reference, mixed)
        else:
            path = root / run.name / "eval" / "metrics.json"
            entry = {"file": str(path), **json.loads(path.read_text())}
        realism.setdefault(generator, {})[kind] = entry
    return realism


def collect_memorization(plan: list[plan_lib.Run], root: pathlib.Path, out: pathlib.Path) -> dict:
    """generator -> its memorization.json summary (without the per-image rows) and its files
    (the closest-pairs PNG relative to `out`, where the report goes)."""
    audits = {}
    for run in plan:
        if run.stage == "memorization":
            path = root / run.name / memorization.REPORT
            summary = {k: v for k, v in json.loads(path.read_text()).items() if k != "images"}
            pairs = os.path.relpath(root / run.name / memorization.PAIRS, out)
            audits[run.base_name.split("/")[1]] = {**summary, "file": str(path), "pairs": pairs}
    return audits


def mixed_classes(plan: list[plan_lib.Run]) -> list[str]:
    """The classes the real + synthetic conditions take from the sets (data.synthetic.classes)."""
    for run in plan:
        if run.base_name.startswith("classifiers/real+"):
            return run.overrides["data.synthetic.classes"].split(",")
    return []


def tested_classes(results: dict, class_names: list[str]) -> list[str]:
    """The classes every run scored a test F1 for: a class absent from the test split has none
    (the classification evaluator scores the classes present)."""
    runs = [run for seeds in results.values() for run in seeds]
    return [c for c in class_names if all(f"{c}/f1" in run["metrics"] for run in runs)]


def stream(plan: list[plan_lib.Run], root: pathlib.Path) -> dict:
    """condition -> {class: {"share", "synthetic_share"}}: the expected share of each class among
    its runs' training draws and the synthetic share of those, as the trainer recorded them
    (data.class_shares, data.synthetic_shares in seed 0's config.json; the seed leaves them)."""
    streams = {}
    for run in plan:
        if not (run.base_name.startswith("classifiers/") and run.base_name.endswith("/seed_0")):
            continue
        config = config_lib.load_workdir_config(root / run.name)
        shares = np.asarray(config.data.class_shares.split(","), np.float64)
        synthetic = np.asarray(config.data.synthetic_shares.split(","), np.float64)
        streams[run.base_name.split("/")[1]] = {
            name: {"share": float(share), "synthetic_share": float(fake)}
            for name, share, fake in zip(
                config_lib.class_names(config), shares, synthetic, strict=True
            )
        }
    return streams


def screening(plan: list[plan_lib.Run], root: pathlib.Path) -> dict:
    """filtered set -> {class: {"wanted", "drawn", "kept", "acceptance"}}: what its filter kept
    (the sample's screening.json)."""
    return {
        run.base_name.split("/")[1]: json.loads(
            (root / run.name / synthesize.SCREENING).read_text()
        )
        for run in plan
        if run.stage == "filtered"
    }
