"""Per-class fidelity of a class-conditional generator: the share of its class-c images that a
reference classifier labels c (the recognised share), beside that classifier's recall on real
images of c (the ceiling: a generator whose images were real would reach it) and their ratio."""

import math
from collections.abc import Mapping, Sequence

import numpy as np


def recognised_share(
    conditioned: Sequence[str], predicted: Sequence[str], ceiling: Mapping[str, float | None]
) -> dict:
    """{"per_class": {class: {"share", "ceiling", "ratio", "n"}}, "balanced", "ceiling_balanced",
    "ratio_balanced", "chance"} for images generated for `conditioned` classes and labelled
    `predicted` by a classifier whose recall on real test images of each of its classes is
    `ceiling` (None for a class the test split lacks).

    Balanced values are means over the generated classes, so a skewed set is not weighted by its
    class mix. Chance is 1 / the classifier's class count (len(ceiling)). A class without a
    ceiling has ratio None and is left out of the balanced ceiling and of both sides of the balanced
    ratio.
    """
    conditioned, predicted = np.asarray(conditioned), np.asarray(predicted)
    if conditioned.shape != predicted.shape:
        raise ValueError(f"{len(conditioned)} conditioned classes for {len(predicted)} labels.")
    per_class = {}
    for name in sorted(set(conditioned.tolist())):
        members = conditioned == name
        share = float(np.mean(predicted[members] == name))
        top = ceiling.get(name)
        per_class[name] = {
            "share": share,
            "ceiling": None if top is None else float(top),
            "ratio": None if not top else share / top,
            "n": int(members.sum()),
        }
    balanced = _mean([c["share"] for c in per_class.values()])
    # The ratio compares like with like: the shares and ceilings of the classes with a ceiling.
    measured = [c for c in per_class.values() if c["ceiling"] is not None]
    ceiling_balanced = _mean([c["ceiling"] for c in measured])
    measured_balanced = _mean([c["share"] for c in measured])
    return {
        "per_class": per_class,
        "balanced": balanced,
        "ceiling_balanced": ceiling_balanced,
        "ratio_balanced": measured_balanced / ceiling_balanced if ceiling_balanced else math.nan,
        "chance": 1.0 / len(ceiling) if ceiling else math.nan,
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown_rows(result: dict, prefix: Sequence[str] = ()) -> list[str]:
    """One markdown row per class, then a "balanced" row: | *prefix | class | images | recognised
    share | ceiling (real recall) | ratio |."""
    lead = "".join(f"{cell} | " for cell in prefix)
    rows = [
        f"| {lead}{name} | {c['n']} | {c['share']:.3f} | {_cell(c['ceiling'])} | "
        f"{_cell(c['ratio'])} |"
        for name, c in result["per_class"].items()
    ]
    total = sum(c["n"] for c in result["per_class"].values())
    rows.append(
        f"| {lead}balanced (chance {result['chance']:.3f}) | {total} | {result['balanced']:.3f} | "
        f"{result['ceiling_balanced']:.3f} | {result['ratio_balanced']:.3f} |"
    )
    return rows


def markdown_header(prefix: Sequence[str] = ()) -> list[str]:
    """The header and rule of markdown_rows' table, with `prefix` columns first."""
    columns = [*prefix, "class", "images", "recognised share", "ceiling (real recall)", "ratio"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
