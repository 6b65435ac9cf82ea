"""The balanced-accuracy / accuracy trade-off of one trained classifier, or of an ensemble of
runs: post-hoc logit adjustment (Menon et al. 2021) over a range of tau, on val and test.

    python tools/operating_points.py --workdir=runs/vit_derma28 [--step=best] [--tta=run]
    python tools/operating_points.py --workdir=runs/s0,runs/s1,runs/s2 --out=ensemble.json

Each tau gives a classifier, argmax of log p(y|x) - tau * log(prior): tau > 0 favours the rare
classes, tau < 0 the common ones, tau = 0 is the model as evaluated. `--prior=split` (default)
takes the training split's class shares (data.class_counts); `--prior=stream` the shares of the
training stream's draws (data.class_shares, after data.balance_alpha and any synthetic mix), the
prior the model learned under, so that tau = 1 is Menon's balanced point. Real-only draws at
balance_alpha a < 1 have stream shares proportional to split counts ** (1 - a): the two sweeps
then trace the same points, the stream's tau being the split's divided by 1 - a.

Each split is scored with the test-time augmentation the run's own evaluator of that split used
(`--tta=run`, the default; `evals.<split>.tta`), so tau = 0 gives the run's own figures.

Several runs (of one data config, e.g. one recipe over seeds) are scored as one classifier whose
p(y|x) is the mean of their softmax.
Prints each split's macro ROC AUC (the ranking, which no tau changes), then one row per tau, and
writes the JSON (`<workdir>/operating_points.json` for one run). It reads the runs alone
(config.json and a checkpoint).
"""

import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from ham_synth import config_lib, fileio, parallel, xla_cpu
from ham_synth import workdir as workdir_lib
from ham_synth.evaluators import classification
from ham_synth.tasks import base, classify

# --prior: the recorded field each one reads.
PRIORS = {"split": "class_counts", "stream": "class_shares"}

_WORKDIRS = flags.DEFINE_list(
    "workdir", None, "A classifier run, or several (comma-separated): an ensemble.", required=True
)
_OUT = flags.DEFINE_string(
    "out", "", "The JSON written; default <workdir>/operating_points.json (one run only)."
)
_STEP = flags.DEFINE_string("step", "best", "Checkpoint: best, latest or a step number.")
_TTA = flags.DEFINE_string(
    "tta",
    "run",
    "Test-time augmentation: run (each split as the run's evaluator of that name: "
    "evals.<split>.tta), none, flips, d4, ...",
)
_TAUS = flags.DEFINE_list("taus", "-1,-0.75,-0.5,-0.25,0,0.25,0.5,0.75,1", "The tau values.")
_SPLITS = flags.DEFINE_list("splits", "val,test", "Splits to score.")
_PRIOR = flags.DEFINE_enum(
    "prior",
    "split",
    list(PRIORS),
    "The prior tau scales: the training split's class shares, "
    "or the training stream's (after balance_alpha and synthetic images).",
)


def log_prior(config, prior: str) -> np.ndarray:
    """float[K]: log of the class shares `prior` names (PRIORS), as the run recorded them."""
    field = PRIORS[prior]
    user = f"tools/operating_points.py --prior={prior}"
    return classify.log_prior(config.data[field], f"data.{field}", base.num_classes(config), user)


def split_tta(config, split: str, tta: str) -> str:
    """`tta`, or for "run" the views the run's own evaluator of `split` used (none without one),
    so that tau = 0 scores the model as the run evaluated it."""
    if tta != "run":
        return tta
    return config.evals.get(split, {}).get("tta", "none")


def run_probs(workdir: pathlib.Path, step: str, tta: str, splits, mesh) -> tuple:
    """(the checkpoint's step, {split: (float[N, K] softmax, int[N] labels)}) for one run."""
    config = config_lib.load_workdir_config(workdir)
    restored = workdir_lib.load(workdir, workdir_lib.parse_step(step))
    probs = {}
    for split in splits:
        views = split_tta(config, split, tta)
        classifier = classification.SplitClassifier(
            "operating_points", config, restored.task, mesh, split, 256, views
        )
        logits = classifier.logits(restored.state)
        probs[split] = (np.asarray(jax.nn.softmax(logits, axis=-1)), classifier.labels)
    return restored.step, probs


def operating_points(workdirs, step: str, tta: str, taus, splits, prior_name="split") -> dict:
    """Each split's macro ROC AUC and, per tau, its accuracy and balanced accuracy, for the
    classifier whose p(y|x) is the runs' mean softmax (the run's own for one run)."""
    mesh = parallel.make_mesh()
    configs = [config_lib.load_workdir_config(w) for w in workdirs]
    prior = log_prior(configs[0], prior_name)
    for workdir, config in zip(workdirs[1:], configs[1:], strict=True):
        if not np.allclose(log_prior(config, prior_name), prior):
            raise ValueError(
                f"{workdir} recorded another data.{PRIORS[prior_name]} than {workdirs[0]}: "
                "an ensemble's members need one prior (one data config, e.g. one recipe over "
                "seeds)."
            )
    steps, members = zip(*(run_probs(w, step, tta, splits, mesh) for w in workdirs), strict=True)
    views = {split: split_tta(configs[0], split, tta) for split in splits}
    result = {"workdirs": [str(w) for w in workdirs], "steps": list(steps), "tta": views,
              "prior": prior_name}  # fmt: skip
    taus = [float(tau) for tau in taus]
    result["rows"] = [{"tau": tau} for tau in taus]
    for split in splits:
        labels = members[0][split][1]
        for workdir, member in zip(workdirs, members, strict=True):
            if not np.array_equal(member[split][1], labels):
                raise ValueError(
                    f"{workdir} reads other {split!r} labels than {workdirs[0]}: an ensemble "
                    "needs runs of one data config (e.g. one recipe over seeds)."
                )
        probs = np.mean([member[split][0] for member in members], axis=0)
        present = classification.present_classes(labels)
        result[f"{split}/roc_auc_macro"] = classification.macro_roc_auc(labels, probs, present)
        swept = classification.tau_scores(probs, labels, prior, taus)
        for row, scores in zip(result["rows"], swept, strict=True):
            row |= {f"{split}/{k}": v for k, v in scores.items()}
    return result


def main(argv) -> None:
    del argv
    xla_cpu.apply()  # Before the first computation starts JAX's backend.
    workdirs = [pathlib.Path(w) for w in _WORKDIRS.value]
    if not _OUT.value and len(workdirs) > 1:
        raise app.UsageError("Several runs: name the JSON to write with --out=FILE.json.")
    out = pathlib.Path(_OUT.value or workdirs[0] / "operating_points.json")
    result = operating_points(
        workdirs, _STEP.value, _TTA.value, _TAUS.value, _SPLITS.value, _PRIOR.value
    )
    splits = _SPLITS.value
    print(" | ".join(f"{s} macro ROC AUC {result[f'{s}/roc_auc_macro']:.3f}" for s in splits))
    header = ["tau"] + [f"{s}/{k}" for s in splits for k in ("balanced_accuracy", "accuracy")]
    print(" | ".join(header))
    for row in result["rows"]:
        print(" | ".join(f"{row[k]:+.2f}" if k == "tau" else f"{row[k]:.3f}" for k in header))
    with fileio.atomic_write(out) as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"Wrote {out}")


if __name__ == "__main__":
    app.run(main)
