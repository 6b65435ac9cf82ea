"""Flax variable trees compared by name and shape, before one is loaded in place of the other:
converted weights, warm starts, and (planned) pretrained `.npz` files."""

from typing import Any

from flax import traverse_util


def check_same(expected: Any, actual: Any, what: str, hint: str = "") -> None:
    """Raises `ValueError("{what}: ...")` naming the first difference between the two trees'
    variable names (`module/.../name`) or shapes; `hint` says how to fix it."""
    want = traverse_util.flatten_dict(expected, sep="/") if expected else {}
    have = traverse_util.flatten_dict(actual, sep="/") if actual else {}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    suffix = f" {hint}" if hint else ""
    if missing or unexpected:
        raise ValueError(
            f"{what}: {len(missing)} missing variables {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}.{suffix}"
        )
    for name, value in want.items():
        if have[name].shape != value.shape:
            raise ValueError(
                f"{what}: {name} has shape {have[name].shape}, expected {value.shape}.{suffix}"
            )
