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
from ham_synth.data import ham10000, pipeline, sources, transforms
from ham_synth.evaluators import classification, features


def find_images(root: pathlib.Path) -> list[pathlib.Path]:
    """Every .png / .jpg / .jpeg under `root` (sub-folders included), sorted."""
    if not root.is_dir():
        raise NotADirectoryError(f"--images={root} is not a folder of images.")
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in sources.FOLDER_SUFFIXES
    )
    if not paths:
        raise FileNotFoundError(f"No .png or .jpg images under {root}.")
    return paths


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
    config = config_lib.load_workdir_config(workdir)
    if config.task != "classify":
        raise ValueError(
            f"{workdir} trained the {config.task!r} family; `classify` needs a classifier run "
            "(configs/vit.py)."
        )
    step = step or workdir_lib.default_step(config)
    restored = workdir_lib.load(workdir, step)
    mesh = parallel.make_mesh()
    ops = transforms.parse_ops(config.data.eval_preprocess, deterministic=True)
    root = pathlib.Path(images)
    paths = find_images(root)
    class_names = config_lib.class_names(config)
    # Decoded as the folder source decodes (central square, data.image_size), then evaluation's ops.
    unlabelled = np.zeros(len(paths), np.int32)
    folder = sources.FolderSource(
        tuple(paths), unlabelled, tuple(class_names), config.data.image_size
    )
    source = pipeline.Preprocessed(folder, ops)
    pixels, errors = [], {}
    for i, path in enumerate(paths):
        try:
            pixels.append(source[i]["image"])
        except ham10000.DataError as error:
            errors[path] = str(error)
    if errors:
        logging.warning("%d of %d images could not be read; their rows say why.", len(errors),
                        len(paths))  # fmt: skip
    probs = np.zeros((0, len(class_names)), np.float32)
    if pixels:
        logits_fn = classification.make_logits_fn(restored.task, config, mesh, tta)
        net = classification.logits_net(logits_fn, restored.state, mesh)
        logits = features.image_features(
            net, np.stack(pixels), parallel.round_to_devices(batch_size, mesh), mesh
        )
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    out = pathlib.Path(out_csv or pathlib.Path(workdir) / "predictions" / f"{root.name}.csv")
    if jax.process_index() == 0:
        write_csv(out, root, paths, errors, probs, class_names)
        print(f"Classified {len(paths) - len(errors)} of {len(paths)} images under {root} with "
              f"{workdir} at step {restored.step} ({step}); wrote {out}")  # fmt: skip
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
