"""The study's statistics: a condition's paired change from its control over seeds (mean,
scipy's paired t-test and its 95% interval), Holm's correction over the conditions compared, and
a plain verdict."""

import math

import numpy as np
from scipy import stats

ALPHA = 0.05


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def paired_change(condition: list[float], real: list[float]) -> dict:
    """Mean of condition - real over paired seeds, scipy's paired t-test p and 95% interval
    (nan with fewer than two seeds, or when every seed's difference is the same: a t-test has
    no spread to weigh the mean against, and scipy would call any such mean significant)."""
    if len(condition) != len(real):
        raise ValueError(
            f"{len(condition)} seed(s) of a condition against {len(real)} of its control: "
            "seeds are paired one to one, so both need the same seeds (rerun the missing runs)."
        )
    a, b = np.asarray(condition, np.float64), np.asarray(real, np.float64)
    diff = a - b
    if len(diff) < 2 or np.allclose(diff, diff[0], rtol=0, atol=1e-12):
        nan = float("nan")
        return {"mean": float(diff.mean()), "low": nan, "high": nan, "p": nan, "n": len(diff)}
    result = stats.ttest_rel(a, b)
    interval = result.confidence_interval(1 - ALPHA)
    return {
        "mean": float(diff.mean()),
        "low": float(interval.low),
        "high": float(interval.high),
        "p": float(result.pvalue),
        "n": len(diff),
    }


def verdict(change: dict, p_holm: float) -> str:
    """helped / hurt where Holm's p is under ALPHA, else no measurable effect."""
    if math.isnan(p_holm):
        return "not testable (fewer than two seeds, or no variation between them)"
    if p_holm < ALPHA:
        return "helped" if change["mean"] > 0 else "hurt"
    return "no measurable effect"


def compare(results: dict, metric: str, controls: dict[str, str], class_names=None) -> dict:
    """(condition[, class]) -> the paired change of each condition of `controls` from its control
    (per seed: {"metrics": {...}}), with Holm-adjusted p over the conditions (x classes)
    compared, and a verdict."""
    keys = [(condition, cls) for condition in controls for cls in (class_names or [None])]

    def values(condition, cls):
        name = f"{cls}/{metric}" if cls else metric
        return [seed["metrics"][name] for seed in results[condition]]

    changes = [paired_change(values(c, k), values(controls[c], k)) for c, k in keys]
    tested = [i for i, ch in enumerate(changes) if not math.isnan(ch["p"])]
    adjusted = np.full(len(changes), np.nan)
    adjusted[tested] = holm([changes[i]["p"] for i in tested])
    return {
        key: {
            **change,
            "control": controls[key[0]],
            "p_holm": float(p),
            "comparisons": len(tested),
            "verdict": verdict(change, p),
        }
        for key, change, p in zip(keys, changes, adjusted, strict=True)
    }


def tstr_ratio(tstr: list[float], trtr: list[float]) -> dict:
    """Train-on-synthetic over train-on-real: the ratio of the mean metric over seeds."""
    mean_tstr, mean_trtr = float(np.mean(tstr)), float(np.mean(trtr))
    ratio = mean_tstr / mean_trtr if mean_trtr else float("nan")
    return {"tstr": mean_tstr, "trtr": mean_trtr, "ratio": ratio}
