"""Does a generator trained on digits draw the class it is asked for? A logistic regression
trained on real digits labels the generated PNGs; we report how often it agrees with the class
each image was conditioned on, overall and per class (the generators' acceptance check: >= 80%
overall and no class below 60%, so none has collapsed), and per class beside the regression's
recall on real test digits (evaluators/recognition.py); and within-class diversity, the mean
pairwise pixel distance of each class's samples over that of its real digits. Classes are read
by name from the manifest, so models trained on a subset (`data.classes="7"`) are checked too.

    ham-synth train --config=configs/ddpm.py:quickstart --workdir=runs/ddpm_quickstart
    ham-synth sample --workdir=runs/ddpm_quickstart --num_per_class=50 \\
        --sample.sampler=ddim --sample.steps=50
    python tools/check_digit_samples.py --synthetic_dir=runs/ddpm_quickstart/synthetic

Writes `digit_check.json` into the synthetic folder.
"""

import csv
import json
import pathlib

import numpy as np
from absl import app, flags
from PIL import Image
from scipy.spatial import distance
from sklearn import linear_model, metrics, model_selection

from ham_synth import synthesize
from ham_synth.data import digits
from ham_synth.evaluators import recognition

_SYNTHETIC_DIR = flags.DEFINE_string("synthetic_dir", None, "A `ham-synth sample` output folder.")
_MIN_ACCURACY = flags.DEFINE_float("min_accuracy", 0.8, "Exit non-zero below this accuracy.")
_MIN_CLASS_ACCURACY = flags.DEFINE_float(
    "min_class_accuracy",
    0.6,
    "Exit non-zero if any class's accuracy is below this (0.6: 30 of 50), so no class collapsed.",
)


def _features(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] -> gray pixels in [0, 1], flattened."""
    return images.astype(np.float32).mean(axis=-1).reshape(len(images), -1) / 255.0


def diversity(fake: np.ndarray, real: np.ndarray) -> float:
    """Mean pairwise pixel distance among `fake` over the same among `real` (one class each):
    about 1 when the samples vary as much as real digits do, near 0 when they are one image."""
    return float(distance.pdist(fake).mean() / distance.pdist(real).mean())


def digit_of(class_name: str) -> int:
    """The digit a class name stands for: "7" -> 7, and imbalanced digits' "3:df" -> 3."""
    digit = class_name.split(":")[0]
    if not digit.isdigit():
        raise SystemExit(f"Class {class_name!r} in the manifest names no digit.")
    return int(digit)


def main(argv) -> None:
    del argv
    folder = pathlib.Path(_SYNTHETIC_DIR.value)
    with open(folder / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    fake = np.stack([np.asarray(Image.open(folder / r["file"]).convert("RGB")) for r in rows])
    # By class name, not the model's label id: a model trained on a subset (data.classes="7")
    # or on imbalanced digits ("3:df") numbers its classes differently.
    fake_labels = np.array([digit_of(r["class"]) for r in rows])

    real, real_labels = digits.load_digits(fake.shape[1], imbalance=False)
    train_x, test_x, train_y, test_y = model_selection.train_test_split(
        _features(real), real_labels, test_size=0.2, stratify=real_labels, random_state=0
    )
    classifier = linear_model.LogisticRegression(max_iter=2000).fit(train_x, train_y)
    predicted = classifier.predict(_features(fake))
    # Digits by the manifest's class names ("3:df"); digits it lacks by their number.
    names = {digit_of(r["class"]): r["class"] for r in rows}
    name_of = np.vectorize(lambda digit: names.get(int(digit), str(digit)))
    test_recall = metrics.recall_score(test_y, classifier.predict(test_x), average=None)
    recognised = recognition.recognised_share(
        name_of(fake_labels),
        name_of(predicted),
        {str(name_of(d)): float(r) for d, r in zip(classifier.classes_, test_recall, strict=True)},
    )
    per_class = {
        str(c): {
            "correct": int(np.sum(predicted[fake_labels == c] == c)),
            "total": int(np.sum(fake_labels == c)),
        }
        for c in np.unique(fake_labels)
    }
    for c, counts in per_class.items():
        counts["accuracy"] = counts["correct"] / counts["total"]
        counts["diversity"] = diversity(
            _features(fake[fake_labels == int(c)]), _features(real[real_labels == int(c)])
        )
    report = {
        "synthetic_dir": str(folder),
        "num_images": len(rows),
        "real_test_accuracy": float(classifier.score(test_x, test_y)),
        "accuracy": float(np.mean(predicted == fake_labels)),
        "diversity": float(np.mean([c["diversity"] for c in per_class.values()])),
        "per_class": per_class,
        # The same agreement beside the classifier's recall on real test digits (its ceiling).
        "recognised": recognised,
        "family": rows[0]["family"],
        "sampler_settings": {
            k: v for k, v in rows[0].items() if k not in synthesize.MANIFEST_FIELDS
        },  # fmt: skip
    }
    (folder / "digit_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print("\n".join(recognition.markdown_header() + recognition.markdown_rows(recognised)))
    failures = []
    if report["accuracy"] < _MIN_ACCURACY.value:
        failures.append(f"accuracy {report['accuracy']:.3f} < {_MIN_ACCURACY.value}")
    failures += [
        f"class {name}: {c['correct']}/{c['total']} = {c['accuracy']:.2f} < "
        f"{_MIN_CLASS_ACCURACY.value}"
        for name, c in per_class.items()
        if c["accuracy"] < _MIN_CLASS_ACCURACY.value
    ]
    if failures:
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    flags.mark_flag_as_required("synthetic_dir")
    app.run(main)
