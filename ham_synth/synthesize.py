"""`ham-synth sample`: a trained generator's EMA params -> class-conditional PNGs plus a manifest.

The output, `W/synthetic/<class_name>/*.png`, is a valid `folder` data source; `manifest.csv`
records, per image, the class, the model family, the checkpoint step, the sampler settings, the
seed and `synthetic=true`.
"""

import csv
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import flags, logging
from jax.experimental import multihost_utils
from PIL import Image

from ham_synth import checkpoint, config_lib, parallel, tasks
from ham_synth.data import sources

OPTIONAL_FLAGS = ("sampler", "steps", "guidance", "classes", "seed", "sample_batch_size", "out_dir")
flags.DEFINE_integer("num_per_class", None, "Images to generate for each class.")
flags.DEFINE_string("sampler", None, "Diffusion sampler (ddpm | ddim | dpmpp_2m); default: config.")
flags.DEFINE_integer("steps", None, "Sampler steps; default: config.sample.steps.")
flags.DEFINE_float("guidance", None, "Classifier-free guidance w; default: config.sample.guidance.")
flags.DEFINE_string("classes", "", "Comma-separated class names to generate; empty: all.")
flags.DEFINE_integer("seed", 0, "Root of the sampling noise; the same seed gives the same images.")
flags.DEFINE_integer("sample_batch_size", 256, "Images per sampling call, over all devices.")
flags.DEFINE_string("out_dir", "", "Where the images go; empty: WORKDIR/synthetic.")

MANIFEST_FIELDS = (
    "file",
    "class",
    "label",
    "family",
    "checkpoint_step",
    "sampler",
    "steps",
    "guidance",
    "seed",
    "synthetic",
)


def _with_sampler_flags(config, sampler, steps, guidance):
    """`config` with config.sample.* overridden by the flags given; families without a sampler
    refuse them."""
    given = {
        k: v
        for k, v in {"sampler": sampler, "steps": steps, "guidance": guidance}.items()
        if v is not None
    }
    if given and "sample" not in config:
        raise ValueError(
            f"The {config.task!r} family has no sampler settings; drop "
            f"{', '.join('--' + k for k in given)}."
        )
    return config_lib.with_values(config, {f"sample.{k}": v for k, v in given.items()})


def _select_labels(class_names, classes: str) -> list[int]:
    if not classes:
        return list(range(len(class_names)))
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in class_names]
    if unknown:
        raise ValueError(f"Unknown classes {unknown}; this model's classes are {class_names}.")
    return [class_names.index(c) for c in wanted]


def _sampler_settings(config) -> dict:
    if "sample" not in config:
        return {"sampler": "prior", "steps": "", "guidance": ""}
    return {k: config.sample[k] for k in ("sampler", "steps", "guidance")}


def run(
    workdir: str,
    num_per_class: int,
    sampler=None,
    steps=None,
    guidance=None,
    classes="",
    seed=0,
    sample_batch_size=256,
    out_dir="",
) -> pathlib.Path:
    """Writes `num_per_class` images per class from the latest checkpoint; returns the folder."""
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir else workdir / "synthetic"
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; move it away or pass --out_dir.")
    config = config_lib.load_workdir_config(workdir)
    config = _with_sampler_flags(config, sampler, steps, guidance)
    class_names = list(sources.get_source(config.data).class_names)
    labels = np.repeat(_select_labels(class_names, classes), num_per_class).astype(np.int32)

    # --- Restore the EMA params ---
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    task = tasks.get_task(config.task)(config)
    size = config.data.image_size
    example = {
        "image": np.zeros((1, size, size, 3), np.float32),
        "label": np.zeros((1,), np.int32),
        "index": np.zeros((1,), np.int32),
    }
    abstract = checkpoint.abstract_with_sharding(
        jax.eval_shape(task.init, jax.random.key(0), example), replicated
    )
    state, step = checkpoint.restore_latest_state(workdir / "checkpoints", abstract)
    settings = _sampler_settings(config)
    logging.info(
        "Sampling %d images (%d classes x %d) from step %d of %s with %s.",
        len(labels),
        len(labels) // num_per_class,
        num_per_class,
        step,
        workdir,
        settings,
    )

    # --- Sample, sharded over the mesh ---
    sample_fn = jax.jit(
        task.sample,
        in_shardings=(replicated, parallel.batch_sharded(mesh), replicated),
        out_shardings=parallel.batch_sharded(mesh),
    )
    batch = -(-min(sample_batch_size, len(labels)) // mesh.size) * mesh.size
    rng = jax.random.key(seed)
    rows = []
    for i, start in enumerate(tqdm.trange(0, len(labels), batch, desc="sample", unit="batch")):
        chunk = labels[start : start + batch]
        padded = np.pad(chunk, (0, batch - len(chunk)), mode="edge")  # Fixed shape: one compile.
        images = sample_fn(state.ema_params, jnp.asarray(padded), jax.random.fold_in(rng, i))
        images = np.asarray(multihost_utils.process_allgather(images, tiled=True))[: len(chunk)]
        if jax.process_index() == 0:
            rows += _write_images(out_dir, images, chunk, class_names, start)

    # --- Manifest ---
    if jax.process_index() == 0:
        with open(out_dir / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        **row,
                        "family": config.task,
                        "checkpoint_step": step,
                        **settings,
                        "seed": seed,
                        "synthetic": "true",
                    }
                )
    if jax.process_count() > 1:  # Others may read the folder next (evaluate does).
        multihost_utils.sync_global_devices("synthesize: images written")
    logging.info("Wrote %d images and manifest.csv to %s.", len(rows), out_dir)
    return out_dir


def _write_images(out_dir, images, labels, class_names, first_index) -> list[dict]:
    """float [-1, 1] images -> PNGs under out_dir/<class_name>/; one manifest row each."""
    pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    rows = []
    for offset, (image, label) in enumerate(zip(pixels, labels, strict=True)):
        name = class_names[label]
        path = out_dir / name / f"{name}_{first_index + offset:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        rows.append({"file": str(path.relative_to(out_dir)), "class": name, "label": int(label)})
    return rows
