"""The `classification` evaluator: a classifier's metrics on any split of its data, by
scikit-learn, with a confusion-matrix and a reliability-diagram PNG.

Scalars: accuracy, balanced_accuracy, {precision, recall, f1}_{macro, weighted}, roc_auc_macro
(one-vs-rest over the classes present in the split), ece (expected calibration error), and
`<class>/{precision, recall, f1}`. Macro averages run over the classes present in the split; a
class absent from it is named in the JSON, not scored as zero.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from sklearn import metrics as sk_metrics

from ham_synth import config_lib, fileio, parallel
from ham_synth import state as state_lib
from ham_synth.data import pipeline
from ham_synth.evaluators import common, features, tta
from ham_synth.tasks import base

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple:
    """(ECE, per-bin rows): |accuracy - confidence| of the top class, averaged over equal-width
    confidence bins weighted by their share of examples (Guo et al. 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        accuracy = float(correct[members].mean()) if count else None
        mean_confidence = float(confidence[members].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(accuracy - mean_confidence)
        rows.append(
            {"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
             "accuracy": accuracy, "confidence": mean_confidence}
        )  # fmt: skip
    return ece, rows


def present_classes(labels: np.ndarray) -> list[int]:
    """The classes that occur in `labels`, ascending: the ones a split's scores average over."""
    return sorted(int(c) for c in np.unique(labels))


def macro_roc_auc(labels: np.ndarray, probs: np.ndarray, present: list[int]) -> float:
    """One-vs-rest ROC-AUC averaged over the classes present, on probabilities renormalized over
    them; nan with fewer than two classes."""
    if len(present) < 2:
        return float("nan")
    # A row whose whole mass sits on absent classes can underflow to 0 on the present ones.
    total = np.maximum(probs[:, present].sum(axis=1, keepdims=True), np.finfo(np.float32).tiny)
    scores = probs[:, present] / total
    if len(present) == 2:
        return float(sk_metrics.roc_auc_score(labels == present[1], scores[:, 1]))
    return float(
        sk_metrics.roc_auc_score(labels, scores, multi_class="ovr", average="macro", labels=present)
    )


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (predicting an absent class is simply
    wrong)."""
    present = present_classes(labels)
    recalls = sk_metrics.recall_score(labels, predictions, labels=present, average=None,
                                      zero_division=0)  # fmt: skip
    return float(np.mean(recalls))


def adjusted_predictions(log_probs: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """int[N]: argmax over classes of log_probs[N, K] - tau * log_prior[K] (post-hoc logit
    adjustment, Menon et al. 2021: tau > 0 favours the classes the prior makes rare)."""
    return np.argmax(log_probs - tau * log_prior, axis=1)


def tau_scores(probs: np.ndarray, labels: np.ndarray, log_prior: np.ndarray, taus) -> list[dict]:
    """Per tau, the accuracy and balanced accuracy of the logit-adjusted predictions of
    probs[N, K] (a tau sweep: the balanced-accuracy / accuracy trade-off of one model)."""
    log_probs = np.log(np.maximum(probs, np.finfo(np.float32).tiny))
    rows = []
    for tau in taus:
        predicted = adjusted_predictions(log_probs, log_prior, tau)
        rows.append({"accuracy": float(np.mean(predicted == labels)),
                     "balanced_accuracy": balanced_accuracy(labels, predicted)})  # fmt: skip
    return rows


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], calibration_bins: int = 15
) -> tuple[dict[str, float], dict]:
    """(scalars, details) for true labels int[N] and class probabilities float[N, K]."""
    predictions = probs.argmax(axis=1)
    everyone = list(range(len(class_names)))
    present = present_classes(labels)
    scalars = {
        "accuracy": sk_metrics.accuracy_score(labels, predictions),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
    }  # fmt: skip
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = sk_metrics.precision_recall_fscore_support(
            labels, predictions, labels=present, average=average, zero_division=0
        )
        scalars |= {f"precision_{average}": precision, f"recall_{average}": recall,
                    f"f1_{average}": f1}  # fmt: skip
    scalars["roc_auc_macro"] = macro_roc_auc(labels, probs, present)
    scalars["ece"], reliability = expected_calibration_error(probs, labels, calibration_bins)
    precision, recall, f1, support = sk_metrics.precision_recall_fscore_support(
        labels, predictions, labels=everyone, average=None, zero_division=0
    )
    per_class = {}
    for c, name in enumerate(class_names):
        per_class[name] = {"precision": float(precision[c]), "recall": float(recall[c]),
                           "f1": float(f1[c]), "support": int(support[c])}  # fmt: skip
        if c in present:
            scalars |= {f"{name}/{k}": per_class[name][k] for k in ("precision", "recall", "f1")}
    details = {
        "num_examples": len(labels),
        "absent_classes": [class_names[c] for c in everyone if c not in present],
        "per_class": per_class,
        "confusion_matrix": sk_metrics.confusion_matrix(labels, predictions, labels=everyone)
        .astype(int)
        .tolist(),
        "reliability": reliability,
    }
    return {k: float(v) for k, v in scalars.items()}, details


# Subgroups smaller than this are listed with their size but not scored.
MIN_SUBGROUP = 10


def subgroup_metrics(labels: np.ndarray, predictions: np.ndarray, subgroups: dict) -> dict:
    """{attribute: {value: {"n", "balanced_accuracy"}}}: balanced accuracy (the mean recall over
    the classes present in the subgroup) of each value of each attribute (e.g. sex, age band,
    body site), None below MIN_SUBGROUP images."""
    result = {}
    for attribute, values in subgroups.items():
        rows = {}
        for value in sorted(set(values.tolist())):
            members = values == value
            score = None
            if members.sum() >= MIN_SUBGROUP:
                score = balanced_accuracy(labels[members], predictions[members])
            rows[value] = {"n": int(members.sum()), "balanced_accuracy": score}
        result[attribute] = rows
    return result


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: pathlib.Path, title: str):
    """Counts, with each row's share as the colour (rows: true class, columns: predicted)."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.0 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black", fontsize=8)  # fmt: skip
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    save_figure(fig, path)


def plot_reliability(rows: list[dict], ece: float, path: pathlib.Path, title: str):
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    filled = [r for r in rows if r["count"]]
    ax.bar([r["low"] for r in filled], [r["accuracy"] for r in filled],
           width=[r["high"] - r["low"] for r in filled], align="edge", edgecolor="black",
           alpha=0.7, label="accuracy")  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece:.3f}")
    ax.legend(loc="upper left")
    save_figure(fig, path)


def save_figure(fig, path: pathlib.Path) -> None:
    with fileio.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


def make_logits_fn(task, config, mesh, tta_views: str = "none"):
    """Jitted (variables, uint8 images [B, H, W, 3]) -> float32 logits [B, K], split over the
    batch: the classifier's predict function on images scaled to [-1, 1] as in training; with
    test-time augmentation (`tta_views`, see evaluators/tta.py), the log of its softmax averaged
    over the views."""
    predict = base.get_predict_fn(task, base.PREDICT, config.task)
    views = tta.parse_views(tta_views)

    def logits(variables, images):
        plain = functools.partial(predict, variables)
        fn = tta.averaged(plain, views) if views else plain
        return fn(images.astype(jnp.float32) / 127.5 - 1)

    return jax.jit(logits, out_shardings=parallel.batch_sharded(mesh))


def logits_net(logits_fn, state, mesh) -> features.FeatureNet:
    """The EMA classifier as a FeatureNet (uint8 images -> logits) for features' batch loops."""
    variables = jax.device_put(state_lib.eval_variables(state), parallel.replicated(mesh))
    return features.FeatureNet("logits", lambda images: logits_fn(variables, images))


class SplitClassifier:
    """A classifier's view of one split, as its evaluators share it: the split read as evaluation
    reads it (data.eval_preprocess), its labels and class names checked against the model's
    (a missing or empty split fails at construction, before training), and the EMA model's
    logits on every image."""

    def __init__(
        self, name: str, config, task, mesh, split: str, batch_size: int, tta_views: str = "none"
    ):
        self.logits_fn = make_logits_fn(task, config, mesh, tta_views)
        self.source = pipeline.eval_source(
            config_lib.with_values(config, {"data.split": split}).data
        )
        self.labels = pipeline.source_labels(self.source)
        if not len(self.labels):
            raise ValueError(f"evals.{name}: the {split!r} split has no images.")
        self.class_names = config_lib.class_names(config)
        if list(self.source.class_names) != self.class_names:
            raise ValueError(
                f"evals.{name}: the {split!r} split's classes {list(self.source.class_names)} "
                f"differ from the model's {self.class_names}."
            )
        self.split, self.mesh = split, mesh
        self.batch_size = parallel.round_to_devices(batch_size, mesh)

    def logits(self, state) -> np.ndarray:
        """float32[N, K]: the EMA model's logits on every image of the split."""
        net = logits_net(self.logits_fn, state, self.mesh)
        logits, _ = features.source_features(net, self.source, self.batch_size, self.mesh)
        return np.asarray(logits)


class ClassificationEvaluator:
    """Scores the EMA model on the split at each run (SplitClassifier reads it); `tta`: the
    softmax averaged over views of each image (evaluators/tta.py: none, flips, d4, ...)."""

    def __init__(
        self,
        *,
        name,
        config,
        task,
        mesh,
        workdir,
        split: str = "val",
        batch_size: int = 256,
        calibration_bins: int = 15,
        tta: str = "none",
    ):
        self.split = SplitClassifier(name, config, task, mesh, split, batch_size, tta)
        self._name = name
        self._bins = calibration_bins
        self.outdir = pathlib.Path(workdir) / "evals" / name

    def probabilities(self, state) -> np.ndarray:
        """float32[N, K]: softmax of the EMA model's logits on every image of the split."""
        return np.asarray(jax.nn.softmax(self.split.logits(state), axis=-1))

    def run(self, state, step: int) -> common.Result:
        probs = self.probabilities(state)
        names = self.split.class_names
        scalars, details = classification_metrics(self.split.labels, probs, names, self._bins)
        details = {"split": self.split.split, **details}
        groups = getattr(self.split.source, "subgroups", None)
        if groups is not None:  # HAM10000 records sex, age and body site.
            details["subgroups"] = subgroup_metrics(self.split.labels, probs.argmax(axis=1), groups)
        if jax.process_index() == 0:
            title = f"{self._name}: {self.split.split} split, step {step}"
            plot_confusion(details["confusion_matrix"], names,
                           self.outdir / f"confusion_step_{step:07d}.png", title)  # fmt: skip
            plot_reliability(details["reliability"], scalars["ece"],
                             self.outdir / f"reliability_step_{step:07d}.png", title)  # fmt: skip
        return common.Result(scalars=scalars, details=details)
