"""The classifier's baseline: a class-balanced logistic regression on the raw pixels of the same
split a ViT config trains and is tested on, scored by the classification evaluator's metrics.

    python tools/baseline_logreg.py --config=configs/vit.py:quickstart
    python tools/baseline_logreg.py --config=configs/vit.py:derma28 \\
        --config.data.path=../shared/data/dermamnist_dev/dermamnist_dev.npz

Pixels are read as evaluation reads them (data.eval_preprocess, no augmentation), scaled to
[0, 1] and standardized on train; scikit-learn's LogisticRegression(class_weight="balanced")
fits them. Writes `--out` (default runs/baselines/<config name>_<split>.json) and prints the
metrics next to a ViT run's test metrics when `--vit_workdir` is given (with --split=test).
"""

import json
import pathlib

import numpy as np
from absl import app, flags
from ml_collections import config_flags
from sklearn import linear_model, pipeline, preprocessing

from ham_synth import config_lib, metric_writer, xla_cpu
from ham_synth.data import pipeline as data_pipeline
from ham_synth.evaluators import classification

config_flags.DEFINE_config_file("config", None, "A classifier config, e.g. configs/vit.py:derma28.")
_SPLIT = flags.DEFINE_string("split", "test", "The split to score (fit on train).")
_C = flags.DEFINE_float("C", 1.0, "Inverse L2 strength of the logistic regression.")
_MAX_ITER = flags.DEFINE_integer("max_iter", 1000, "lbfgs iterations.")
_OUT = flags.DEFINE_string("out", None, "JSON path; default runs/baselines/<config>_<split>.json.")
_VIT_WORKDIR = flags.DEFINE_string(
    "vit_workdir", None, "A ViT run whose test metrics to print beside it (--split=test only)."
)

SHOWN = ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro")


def read_split(config, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(float32[N, D] pixels in [0, 1], int32[N] labels, class names) of `split`."""
    source = data_pipeline.eval_source(config_lib.with_values(config, {"data.split": split}).data)
    images = np.stack([source[i]["image"] for i in range(len(source))])
    pixels = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return pixels, data_pipeline.source_labels(source), tuple(source.class_names)


def fit_and_score(config, split: str, C: float = 1.0, max_iter: int = 1000) -> dict:
    """Fits on train, scores `split`: {"scalars": ..., "details": ...} as the evaluator's."""
    x_train, y_train, class_names = read_split(config, "train")
    x_eval, y_eval, _ = read_split(config, split)
    model = pipeline.make_pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(class_weight="balanced", C=C, max_iter=max_iter),
    )
    model.fit(x_train, y_train)
    probs = np.zeros((len(x_eval), len(class_names)))
    probs[:, model.classes_] = model.predict_proba(x_eval)  # A class absent from train: 0.
    scalars, details = classification.classification_metrics(y_eval, probs, list(class_names))
    return {"scalars": scalars, "details": details, "num_train": len(y_train)}


def vit_test_metrics(workdir: str) -> dict[str, float]:
    """The last test/* scalars a ViT run logged."""
    rows = [r for r in metric_writer.read_metrics(pathlib.Path(workdir)) if "test/accuracy" in r]
    if not rows:
        raise FileNotFoundError(f"{workdir}/metrics.jsonl has no test/* metrics yet.")
    return {k.removeprefix("test/"): v for k, v in rows[-1].items() if k.startswith("test/")}


def main(argv):
    del argv
    xla_cpu.apply()  # Before the first computation starts JAX's backend.
    config = flags.FLAGS.config
    if _VIT_WORKDIR.value and _SPLIT.value != "test":
        raise app.UsageError("--vit_workdir prints a run's test metrics: use it with --split=test.")
    result = fit_and_score(config, _SPLIT.value, _C.value, _MAX_ITER.value)
    result |= {"split": _SPLIT.value, "data": config.data.to_dict()}
    path, _, arg = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")
    default = f"runs/baselines/{pathlib.Path(path).stem}_{arg}_{_SPLIT.value}.json"
    out = pathlib.Path(_OUT.value or default)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    columns = {"logistic regression (balanced)": result["scalars"]}
    if _VIT_WORKDIR.value:
        columns[f"ViT {_VIT_WORKDIR.value}"] = vit_test_metrics(_VIT_WORKDIR.value)
    print(f"{_SPLIT.value} split, {result['num_train']} training images:")
    print(f"{'':20s}" + "".join(f"{c:>34s}" for c in columns))
    for metric in SHOWN:
        print(f"{metric:20s}" + "".join(f"{col[metric]:>34.4f}" for col in columns.values()))
    print(f"Wrote {out}")


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
