"""The study's statistics against closed forms: Holm's adjusted p-values by hand, and the paired
interval as the t interval of the differences."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from ham_synth.study import stats as study_stats


def test_holm_matches_hand_values():
    adjusted = study_stats.holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(study_stats.holm([0.5, 0.9]), [1.0, 1.0])


def test_paired_interval_is_the_t_interval_of_the_differences():
    a, b = [0.71, 0.74, 0.69, 0.75], [0.70, 0.70, 0.66, 0.70]
    change = study_stats.paired_change(a, b)
    d = np.subtract(a, b)
    half = scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert change["mean"] == pytest.approx(d.mean())
    assert (change["low"], change["high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert change["p"] == pytest.approx(2 * scipy_stats.t.sf(abs(t), len(d) - 1))
    assert np.isnan(study_stats.paired_change([0.7], [0.6])["p"])


def test_the_same_change_at_every_seed_is_not_testable_rather_than_significant():
    # Accuracies are k / N, so two seeds can move by exactly the same amount; scipy's p is then 0.
    condition, control = [0.701, 0.712], [0.698, 0.709]
    change = study_stats.paired_change(condition, control)
    assert change["mean"] == pytest.approx(0.003)
    assert np.isnan(change["p"]) and np.isnan(change["low"]) and np.isnan(change["high"])
    assert study_stats.verdict(change, change["p"]).startswith("not testable")


def test_a_condition_and_its_control_need_the_same_seeds():
    # numpy would stretch one seed against three into a "significant" paired test.
    with pytest.raises(ValueError, match="1 seed.*against 3 of its control"):
        study_stats.paired_change([0.75], [0.70, 0.71, 0.72])


def test_each_condition_is_compared_with_its_own_control_under_one_holm_family():
    def seeds(*values):
        return [{"metrics": {"m": v}} for v in values]

    runs = {"real": (0.70, 0.72, 0.71), "real:uniform": (0.60, 0.61, 0.63),
            "real+a": (0.62, 0.64, 0.63), "real+b": (0.73, 0.75, 0.72)}  # fmt: skip
    results = {condition: seeds(*values) for condition, values in runs.items()}
    controls = {"real+a": "real:uniform", "real+b": "real"}
    changes = study_stats.compare(results, "m", controls)
    assert list(changes) == [("real+a", None), ("real+b", None)]
    expected = [study_stats.paired_change(runs[c], runs[controls[c]]) for c in controls]
    for (condition, _), change, want in zip(changes, changes.values(), expected, strict=True):
        assert change["control"] == controls[condition]
        assert change["mean"] == pytest.approx(want["mean"])
        assert change["comparisons"] == 2
    np.testing.assert_allclose(
        [c["p_holm"] for c in changes.values()], study_stats.holm([w["p"] for w in expected])
    )


def test_holm_runs_over_the_testable_comparisons_only():
    def seeds(*values):
        return [{"metrics": {"m": v}} for v in values]

    runs = {"real": (0.70, 0.72, 0.71), "real+a": (0.62, 0.64, 0.60),
            "real+same": (0.71, 0.73, 0.72)}  # fmt: skip  # +0.01 at every seed.
    results = {condition: seeds(*values) for condition, values in runs.items()}
    changes = study_stats.compare(results, "m", {"real+a": "real", "real+same": "real"})
    a, same = changes[("real+a", None)], changes[("real+same", None)]
    assert np.isnan(same["p_holm"]) and same["verdict"].startswith("not testable")
    # A family of one: Holm leaves real+a's p as it is.
    assert a["comparisons"] == 1 and a["p_holm"] == pytest.approx(a["p"])
