"""Does a generator trained on digits draw the class it is asked for? A logistic regression
trained on real digits labels the generated PNGs; we report how often it agrees with the class
each image was conditioned on (the DDPM quickstart's acceptance check, >= 80%).

    ham-synth train --config=configs/ddpm.py:quickstart --workdir=runs/ddpm_quickstart
    ham-synth sample --workdir=runs/ddpm_quickstart --num_per_class=50 --sampler=ddim --steps=50
    python tools/check_digit_samples.py --synthetic_dir=runs/ddpm_quickstart/synthetic

Writes `digit_check.json` into the synthetic folder.
"""

import csv
import json
import pathlib

import numpy as np
from absl import app, flags
from PIL import Image
from sklearn import linear_model, model_selection

from ham_synth.data import sources

_SYNTHETIC_DIR = flags.DEFINE_string("synthetic_dir", None, "A `ham-synth sample` output folder.")
_MIN_ACCURACY = flags.DEFINE_float("min_accuracy", 0.8, "Exit non-zero below this accuracy.")


def _features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> gray pixels in [0, 1], flattened."""
    return images.astype(np.float32).mean(axis=-1).reshape(len(images), -1) / 255.0


def main(argv) -> None:
    del argv
    folder = pathlib.Path(_SYNTHETIC_DIR.value)
    with open(folder / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    fake = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows])
    fake_labels = np.array([int(r["label"]) for r in rows])

    real, real_labels = sources.load_digits(fake.shape[1], imbalance=False, seed=0)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        _features(real), real_labels, test_size=0.2, stratify=real_labels, random_state=0
    )
    classifier = linear_model.LogisticRegression(max_iter=2000).fit(train_x, train_y)
    predicted = classifier.predict(_features(fake))
    report = {
        "synthetic_dir": str(folder),
        "num_images": len(rows),
        "real_test_accuracy": float(classifier.score(test_x, test_y)),
        "accuracy": float(np.mean(predicted == fake_labels)),
        "per_class_accuracy": {
            str(c): float(np.mean(predicted[fake_labels == c] == c)) for c in np.unique(fake_labels)
        },
        "family": rows[0]["family"],
        "sampler": rows[0]["sampler"],
        "steps": rows[0]["steps"],
        "guidance": rows[0]["guidance"],
    }
    (folder / "digit_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if report["accuracy"] < _MIN_ACCURACY.value:
        raise SystemExit(f"accuracy {report['accuracy']:.3f} < {_MIN_ACCURACY.value}")


if __name__ == "__main__":
    flags.mark_flag_as_required("synthetic_dir")
    app.run(main)
