"""Small grain transforms, one job each, applied per record before batching."""

import grain
import numpy as np


class ToModelInputs(grain.transforms.Map):
    """uint8 image -> float32 in [-1, 1]; keeps only the numeric fields the model sees."""

    def map(self, record: dict) -> dict:
        image = record["image"].astype(np.float32) * (2.0 / 255.0) - 1.0
        return {
            "image": image,
            "label": np.int32(record["label"]),
            "index": np.int32(record["index"]),
        }
