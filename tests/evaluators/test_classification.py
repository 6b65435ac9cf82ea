"""The classification evaluator: metrics against hand-computed values, absent classes named,
and its files from a ViT training run."""

import json
import math

import numpy as np
import pytest

from ham_synth import evaluate, metric_writer
from ham_synth.data import pipeline
from ham_synth.evaluators import classification
from ham_synth.tasks import classify

NAMES = ["a", "b", "c", "d"]


def _probs(predictions, confidence=0.8, classes=4):
    """Each row puts `confidence` on its prediction and spreads the rest evenly."""
    probs = np.full((len(predictions), classes), (1 - confidence) / (classes - 1))
    probs[np.arange(len(predictions)), predictions] = confidence
    return probs


def test_metrics_equal_hand_computed_values_and_name_the_absent_class():
    labels = np.array([0, 0, 1, 1, 2])
    scalars, details = classification.classification_metrics(
        labels, _probs([0, 1, 1, 1, 0]), NAMES, calibration_bins=10
    )
    assert scalars["accuracy"] == pytest.approx(3 / 5)
    # Recall per present class: a 1/2, b 2/2, c 0/1; class d is absent, so not averaged in.
    assert scalars["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert scalars["recall_macro"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    # Precision: a 1/2 (one of two "a" predictions), b 2/3, c 0 (never predicted).
    assert scalars["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    f1 = [2 * p * r / (p + r) if p + r else 0 for p, r in ((1 / 2, 1 / 2), (2 / 3, 1), (0, 0))]
    assert scalars["f1_macro"] == pytest.approx(sum(f1) / 3)
    assert scalars["f1_weighted"] == pytest.approx((2 * f1[0] + 2 * f1[1] + f1[2]) / 5)
    # Every confidence is 0.8 and 3 of 5 are right: ECE = |0.6 - 0.8|.
    assert scalars["ece"] == pytest.approx(0.2)
    assert details["absent_classes"] == ["d"]
    assert details["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert "d/recall" not in scalars and scalars["b/recall"] == 1.0
    assert details["confusion_matrix"][0] == [1, 1, 0, 0]


def test_ece_weighs_each_bin_by_its_share_of_examples():
    """Two occupied bins (Guo et al. 2017): 3 images at confidence 0.85, 2 right, and 1 at 0.55,
    wrong: ECE = 3/4 |2/3 - 0.85| + 1/4 |0 - 0.55|."""
    probs = np.array([[0.85, 0.15], [0.85, 0.15], [0.15, 0.85], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0])
    ece, rows = classification.expected_calibration_error(probs, labels, bins=10)
    assert ece == pytest.approx(3 / 4 * abs(2 / 3 - 0.85) + 1 / 4 * 0.55)
    occupied = [(r["low"], r["count"]) for r in rows if r["count"]]
    assert occupied == [(pytest.approx(0.5), 1), (pytest.approx(0.8), 3)]


def test_subgroup_balanced_accuracy_by_hand(monkeypatch):
    monkeypatch.setattr(classification, "MIN_SUBGROUP", 3)
    labels = np.array([0, 0, 1, 1, 0, 1, 2])
    predictions = np.array([0, 1, 1, 1, 0, 0, 0])
    sex = np.array(["f", "f", "f", "f", "m", "m", "m"])
    result = classification.subgroup_metrics(labels, predictions, {"sex": sex})
    # f: class 0 recall 1/2, class 1 recall 2/2 -> 0.75; m: 1/1, 0/1, 0/1 -> 1/3.
    assert result["sex"]["f"] == {"n": 4, "balanced_accuracy": 0.75}
    assert result["sex"]["m"]["balanced_accuracy"] == pytest.approx(1 / 3)
    small = classification.subgroup_metrics(labels[:2], predictions[:2], {"sex": sex[:2]})
    assert small["sex"]["f"] == {"n": 2, "balanced_accuracy": None}


def test_roc_auc_is_one_when_the_true_class_always_ranks_first_and_nan_for_one_class():
    labels = np.array([0, 1, 2, 0, 1, 2])
    scalars, _ = classification.classification_metrics(labels, _probs(labels), NAMES)
    assert scalars["roc_auc_macro"] == pytest.approx(1.0)
    scalars, details = classification.classification_metrics(
        np.array([1, 1]), _probs([1, 0]), NAMES
    )
    assert math.isnan(scalars["roc_auc_macro"])
    assert details["absent_classes"] == ["a", "c", "d"]


def test_logit_adjustment_at_tau_zero_or_equal_shares_is_the_argmax():
    log_probs = np.log(np.random.default_rng(0).dirichlet(np.ones(5), size=200))
    skewed = np.log([0.6, 0.1, 0.1, 0.1, 0.1])
    np.testing.assert_array_equal(
        classification.adjusted_predictions(log_probs, skewed, 0.0), log_probs.argmax(1)
    )
    for tau in (-1.0, 0.5, 2.0):
        np.testing.assert_array_equal(
            classification.adjusted_predictions(log_probs, np.log(np.full(5, 0.2)), tau),
            log_probs.argmax(1),
        )


def test_roc_auc_survives_a_row_whose_mass_underflowed_onto_an_absent_class():
    # float32 softmax([-88, -88, 0]) is exactly [0, 0, 1]: 0 / 0 on the present classes was nan.
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0, 0, 1], [0.3, 0.7, 0], [0.6, 0.4, 0], [0.2, 0.8, 0]], np.float32)
    # The row that underflowed scores 0 for class 1, below every class-1 row: AUC 1.
    assert classification.macro_roc_auc(labels, probs, [0, 1]) == 1.0


def test_the_stream_prior_at_balance_alpha_a_is_the_split_prior_to_the_power_1_minus_a():
    """So tools/operating_points.py's two priors trace the same points (tau scaled by 1 - a)."""
    counts = np.array([600, 120, 30, 6])
    labels = np.repeat(np.arange(4), counts)
    split = classify.log_prior(",".join(map(str, counts)), "data.class_counts", 4, "test")
    for alpha in (0.0, 0.5, 0.8):
        shares, _ = pipeline.stream_shares(labels, 4, alpha, None)
        stream = classify.log_prior(",".join(map(str, shares)), "data.class_shares", 4, "test")
        centred = stream - stream.mean()
        np.testing.assert_allclose(centred, (1 - alpha) * (split - split.mean()), atol=1e-12)
    with pytest.raises(ValueError, match=r"x needs a positive prior .* data.class_counts='5,0,3'"):
        classify.log_prior("5,0,3", "data.class_counts", 3, "x")


def test_logit_adjustment_moves_a_two_class_threshold_by_the_prior_ratio():
    # p(rare) = q; with shares (0.9, 0.1) and tau 1, rare wins when q / (1 - q) > 0.1 / 0.9.
    q = np.linspace(0.005, 0.995, 100)  # Never on the threshold itself.
    log_probs = np.log(np.stack([1 - q, q], axis=1))
    predicted = classification.adjusted_predictions(log_probs, np.log([0.9, 0.1]), 1.0)
    np.testing.assert_array_equal(predicted, (q > 0.1).astype(int))


def test_vit_run_writes_metrics_plots_and_tests_the_best_checkpoint(vit_run):
    tmp_path = vit_run
    rows = metric_writer.read_metrics(tmp_path)
    val_rows = [r for r in rows if "val/balanced_accuracy" in r]
    assert [r["step"] for r in val_rows] == [3, 6]
    top = max(r["val/balanced_accuracy"] for r in val_rows)
    final = rows[-1]
    assert final["step"] == 6 and "test/f1_macro" in final and "test/roc_auc_macro" in final
    best = int(final["test/checkpoint_step"])
    assert best in [r["step"] for r in val_rows if r["val/balanced_accuracy"] == top]
    assert (tmp_path / "checkpoints" / str(best)).is_dir()
    record = json.loads((tmp_path / "evals" / "test" / f"step_{best:07d}.json").read_text())
    assert (
        record["split"] == "test"
        and sum(map(sum, record["confusion_matrix"])) == record["num_examples"]
    )
    for kind in ("confusion", "reliability"):
        assert (tmp_path / "evals" / "val" / f"{kind}_step_0000003.png").stat().st_size > 1000
    # The same numbers as evaluating the best checkpoint afterwards.
    again = evaluate.evaluate_run(str(tmp_path), "best", ["test"])
    for key, value in again.items():
        np.testing.assert_allclose(final[key], value, rtol=1e-6, err_msg=key)
