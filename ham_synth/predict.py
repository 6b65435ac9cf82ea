"""`ham-synth classify`: a trained classifier's predictions for a folder of new images, as a CSV
with the predicted class, its probability and every class's probability, one row per image.

Images are prepared as training's folder source prepares them (central square, resized to
data.image_size) and then as evaluation does (data.eval_preprocess). An image that cannot be
decoded gets a row with its error instead of predictions, so one bad file loses nothing.
"""

import csv
import pathlib

import jax
import numpy as np
from absl import logging

from ham_synth import config_lib, fileio, parallel
from ham_synth import workdir as workdir_lib
from ham_synth.data import ham10000, image_folder, transforms
from ham_synth.evaluators import classification, features


def find_images(root: pathlib.Path) -> list[pathlib.Path]:
    """Every .png / .jpg / .jpeg under `root` (sub-folders included), sorted."""
    if not root.is_dir():
        raise NotADirectoryError(f"--images={root} is not a folder of images.")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in image_folder.FOLDER_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"No .png or .jpg images under {root}.")
    return paths


class Classifier:
    """A trained classifier run at `step` (default: its best checkpoint when it keeps one) as a
    function of images: uint8 [N, H, W, 3] at its data.image_size -> float32 class
    probabilities [N, K], prepared as evaluation prepares them (data.eval_preprocess) and
    averaged over `tta` views (evaluators/tta.py: none, flips, d4, ...)."""

    def __init__(self, workdir: str, step: str | None = None, tta: str = "none", batch_size=256):
        config = config_lib.load_workdir_config(workdir)
        if config.task != "classify":
            raise ValueError(
                f"{workdir} trained the {config.task!r} family; a classifier run (configs/vit.py) "
                "is needed here."
            )
        self.step_name = step or workdir_lib.default_step(config)
        restored = workdir_lib.load(workdir, self.step_name)
        self.step, self.workdir = restored.step, workdir
        self.class_names = config_lib.class_names(config)
        self.image_size = config.data.image_size
        self._ops = transforms.parse_ops(config.data.eval_preprocess, deterministic=True)
        self._mesh = parallel.make_mesh()
        logits_fn = classification.make_logits_fn(restored.task, config, self._mesh, tta)
        self._net = classification.logits_net(logits_fn, restored.state, self._mesh)
        self._batch_size = parallel.round_to_devices(batch_size, self._mesh)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image at data.image_size -> as evaluation feeds it."""
        return transforms.apply_ops(self._ops, image) if self._ops else image

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.workdir} classifies {self.image_size}x{self.image_size} images; these are "
                f"{images.shape[1]}x{images.shape[2]}. Use a classifier trained at their size."
            )
        prepared = np.stack([self.prepare(image) for image in images])
        logits = features.image_features(self._net, prepared, self._batch_size, self._mesh)
        return np.asarray(jax.nn.softmax(logits, axis=-1))


def confidence_screen(workdir: str, min_confidence: float, class_names, tta: str = "none"):
    """A sample screen (synthesize.write_samples): (uint8 images, conditioning labels) ->
    (bool[N] kept: classifier run `workdir` gives each image's conditioning class a probability
    >= `min_confidence`, {"confidence": that probability}), for `sample --filter_workdir`. The
    classifier must know the generator's `class_names`, in its order."""
    if not 0 < min_confidence <= 1:
        raise ValueError(f"--min_confidence={min_confidence}; give a probability in (0, 1].")
    classifier = Classifier(workdir, tta=tta)
    if list(classifier.class_names) != list(class_names):
        raise ValueError(
            f"--filter_workdir={workdir} classifies {classifier.class_names}; the generator makes "
            f"{list(class_names)}. Filter with a classifier trained on the generator's data."
        )
    logging.info("Filtering samples with %s at step %d: keeping p(class) >= %g.", workdir,
                 classifier.step, min_confidence)  # fmt: skip

    def screen(images: np.ndarray, labels: np.ndarray):
        probs = classifier.probabilities(images)
        confidence = probs[np.arange(len(labels)), labels]
        return confidence >= min_confidence, {"confidence": confidence}

    return screen


def default_csv(workdir, images: pathlib.Path) -> pathlib.Path:
    """WORKDIR/predictions/<the images folder's own name>.csv (`.` named by where it is)."""
    return pathlib.Path(workdir) / "predictions" / f"{images.resolve().name}.csv"


def run(
    workdir: str,
    images: str,
    step: str | None = None,
    out_csv: str | None = None,
    batch_size: int = 256,
    tta: str = "none",
) -> pathlib.Path:
    """Writes the CSV (default WORKDIR/predictions/<images folder name>.csv); returns its path.
    `step`: latest, best or a number; default best when the run keeps one, else latest. `tta`:
    the softmax averaged over views of each image (evaluators/tta.py: none, flips, d4, ...)."""
    classifier = Classifier(workdir, step, tta, batch_size)
    root = pathlib.Path(images)
    paths = find_images(root)
    # Decoded as the folder source decodes (central square, data.image_size).
    unlabelled = np.zeros(len(paths), np.int32)
    folder = image_folder.FolderSource(
        tuple(paths), unlabelled, tuple(classifier.class_names), classifier.image_size
    )
    pixels, errors = [], {}
    for i, path in enumerate(paths):
        try:
            pixels.append(folder[i]["image"])
        except ham10000.DataError as error:
            errors[path] = str(error)
    if errors:
        logging.warning("%d of %d images could not be read; their rows say why.", len(errors),
                        len(paths))  # fmt: skip
    probs = np.zeros((0, len(classifier.class_names)), np.float32)
    if pixels:
        probs = classifier.probabilities(np.stack(pixels))
    out = pathlib.Path(out_csv) if out_csv else default_csv(workdir, root)
    if jax.process_index() == 0:
        write_csv(out, root, paths, errors, probs, classifier.class_names)
        print(
            f"Classified {len(paths) - len(errors)} of {len(paths)} images under {root} with "
            f"{workdir} at step {classifier.step} ({classifier.step_name}); wrote {out}"
        )
    return out


def write_csv(out, root, paths, errors, probs, class_names) -> None:
    """path (relative to root), predicted, probability, p_<class>..., error."""
    rows = iter(probs)
    with fileio.atomic_write(out, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "predicted", "probability",
                         *[f"p_{name}" for name in class_names], "error"])  # fmt: skip
        for path in paths:
            name = path.relative_to(root).as_posix()
            if path in errors:
                writer.writerow([name, "", "", *[""] * len(class_names), errors[path]])
                continue
            p = next(rows)
            top = int(np.argmax(p))
            writer.writerow([name, class_names[top], f"{p[top]:.6f}",
                             *[f"{x:.6f}" for x in p], ""])  # fmt: skip
