"""tools/operating_points.py's post-hoc logit adjustment, against closed forms and scikit-learn."""

import importlib.util

import numpy as np
from conftest import REPO
from sklearn import metrics

spec = importlib.util.spec_from_file_location("op", REPO / "tools" / "operating_points.py")
op = importlib.util.module_from_spec(spec)
spec.loader.exec_module(op)


def test_tau_zero_is_the_models_argmax_and_equal_shares_change_nothing():
    log_probs = np.log(np.random.default_rng(0).dirichlet(np.ones(5), size=200))
    np.testing.assert_array_equal(
        op.adjusted_predictions(log_probs, np.log([0.6, 0.1, 0.1, 0.1, 0.1]), 0.0),
        log_probs.argmax(1),
    )
    equal = np.log(np.full(5, 0.2))
    for tau in (-1.0, 0.5, 2.0):
        np.testing.assert_array_equal(
            op.adjusted_predictions(log_probs, equal, tau), log_probs.argmax(1)
        )


def test_two_classes_move_the_threshold_by_the_prior_ratio():
    # p(rare) = q; with shares (0.9, 0.1) and tau 1, rare wins when q / (1 - q) > 0.1 / 0.9.
    q = np.linspace(0.005, 0.995, 100)  # Never on the threshold itself.
    log_probs = np.log(np.stack([1 - q, q], axis=1))
    predicted = op.adjusted_predictions(log_probs, np.log([0.9, 0.1]), 1.0)
    np.testing.assert_array_equal(predicted, (q > 0.1).astype(int))


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels, predicted = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    got = op.scores(labels, predicted)
    assert got["accuracy"] == metrics.accuracy_score(labels, predicted)
    assert np.isclose(got["balanced_accuracy"], metrics.balanced_accuracy_score(labels, predicted))
