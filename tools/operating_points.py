"""The balanced-accuracy / accuracy trade-off of one trained classifier: post-hoc logit
adjustment (Menon et al. 2021) over a range of tau, on val and test.

    python tools/operating_points.py --workdir=runs/vit_derma28 [--step=best] [--tta=d4]

Each tau gives a classifier, argmax of log p(y|x) - tau * log(prior), the prior being the
training split's class shares (data.class_counts): tau > 0 favours the rare classes, tau < 0
the common ones, tau = 0 is the model as evaluated. Prints one row per tau and writes
`<workdir>/operating_points.json`. It reads the run alone (config.json and a checkpoint).
"""

import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from ham_synth import config_lib, fileio, parallel, xla_cpu
from ham_synth import workdir as workdir_lib
from ham_synth.evaluators import classification
from ham_synth.tasks import classify

_WORKDIR = flags.DEFINE_string("workdir", None, "A classifier run.", required=True)
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
_TTA = flags.DEFINE_string("tta", "none", "Test-time augmentation: none, flips, d4, ...")
_TAUS = flags.DEFINE_list("taus", "-1,-0.75,-0.5,-0.25,0,0.25,0.5,0.75,1", "The tau values.")
_SPLITS = flags.DEFINE_list("splits", "val,test", "Splits to score.")


def scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean recall over the classes present in `labels`)."""
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "balanced_accuracy": classification.balanced_accuracy(labels, predictions),
    }


def log_class_shares(config) -> np.ndarray:
    """float[K]: log of the training split's class shares, from data.class_counts."""
    counts = classify.recorded_numbers(
        config.data.class_counts, "data.class_counts", "tools/operating_points.py"
    )
    return np.log(counts / counts.sum())


def main(argv) -> None:
    del argv
    xla_cpu.apply()  # Before the first computation starts JAX's backend.
    workdir = pathlib.Path(_WORKDIR.value)
    config = config_lib.load_workdir_config(workdir)
    restored = workdir_lib.load(workdir, workdir_lib.parse_step(_STEP.value))
    mesh = parallel.make_mesh()
    log_prior = log_class_shares(config)
    splits = {}
    for split in _SPLITS.value:
        classifier = classification.SplitClassifier(
            "operating_points", config, restored.task, mesh, split, 256, _TTA.value
        )
        log_probs = np.asarray(jax.nn.log_softmax(classifier.logits(restored.state), axis=-1))
        splits[split] = (log_probs, classifier.labels)
    rows = []
    for tau in map(float, _TAUS.value):
        row = {"tau": tau}
        for split, (log_probs, labels) in splits.items():
            predicted = classification.adjusted_predictions(log_probs, log_prior, tau)
            row |= {f"{split}/{k}": v for k, v in scores(labels, predicted).items()}
        rows.append(row)
    header = ["tau"] + [f"{s}/{k}" for s in splits for k in ("balanced_accuracy", "accuracy")]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:+.2f}" if k == "tau" else f"{row[k]:.3f}" for k in header))
    out = workdir / "operating_points.json"
    result = {"step": restored.step, "tta": _TTA.value, "rows": rows}
    with fileio.atomic_write(out) as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
