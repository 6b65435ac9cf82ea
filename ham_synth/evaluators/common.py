"""What every evaluator shares: its result type and its fixed rng."""

import dataclasses
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Result:
    scalars: Mapping[str, float] = dataclasses.field(default_factory=dict)  # Logged as name/key.
    images: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # uint8 HWC, TB.
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # JSON beside scalars.


def evaluator_rng(seed: int, name: str) -> jax.Array:
    """The same key at every evaluation of entry `name`, so results from different steps compare
    on the same noise; entries with different names draw different noise."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()) % 2**31)
