"""`ham-synth sample`: a trained generator's EMA params -> class-conditional PNGs plus a manifest.

The output, `W/synthetic/<class_name>/*.png`, is a valid `folder` data source; `manifest.csv`
records, per image, the class, the model family, the checkpoint step, the seed, `synthetic=true`
and a column per sampler setting. Each PNG carries its provenance too, in text chunks (synthetic,
generator, run, step, seed, sampler settings, class), so a copied file stays labelled as synthetic.

Sampler settings are whatever the family's sample function declares (its keyword-only
parameters, base.predict_settings): `--sample.KEY=VALUE` on the command line, `**settings` here.
Nothing in this module names them, so a family adds a setting in its task file and config alone.

Screens drop images and draw their slots again, up to `max_draws` draws a slot: near-copies of
training images (`--exclude_near_copies`) and images a classifier run does not label as their
class with enough confidence (`--filter_workdir`, `--min_confidence`). With a screen on,
screening.json records, per class, the images wanted, drawn and kept; the manifest records each
kept image's confidence when a classifier filtered it.

The manifest is written last: a folder with one is finished, and `sample` refuses it unless
`--overwrite`. A folder without one is an unfinished sample (killed): a rerun keeps the batches
whose PNGs all decode with this sample's provenance and draws the others again with their own
noise, so the folder ends as an uninterrupted run would have left it (with a screen, up to the
redraws: which slots still need one depends on where the run stopped).
"""

import collections
import csv
import pathlib
import re

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image, PngImagePlugin

from ham_synth import config_lib, fileio, grids, memorization, parallel, predict
from ham_synth import state as state_lib
from ham_synth import workdir as workdir_lib
from ham_synth.data import imaging
from ham_synth.data import synthetic as synthetic_data
from ham_synth.tasks import base, sampling

SCREENING = "screening.json"  # Per class: wanted, drawn, kept (written when a screen is on).

# The manifest's columns before the sampler settings, which follow in their declared order.
MANIFEST_FIELDS = (
    "file",
    "class",
    "label",
    "family",
    "checkpoint_step",
    "seed",
    "confidence",  # The filtering classifier's p(class) (--filter_workdir); empty without one.
    "synthetic",
)


def sampler_settings(run: workdir_lib.Run, given: dict | None = None) -> dict:
    """Every setting of the family's sample function, at its config default or as `given`
    (strings from the command line are converted to the default's type)."""
    fn = base.get_predict_fn(run.task, base.SAMPLE, run.config.task)
    defaults = base.predict_settings(fn)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(
            f"The {run.config.task!r} family's sampler takes no {unknown} (it takes "
            f"{sorted(defaults) or 'none'}); drop {', '.join('--sample.' + k for k in unknown)}."
        )
    return {k: _as_type_of(defaults[k], given[k], k) if k in given else v
            for k, v in defaults.items()}  # fmt: skip


def _as_type_of(default, value, name: str):
    """`value` (a string from the command line, or a config value) as the type of `default`."""
    kind = type(default)
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("true", "false"):
                raise ValueError(value)
            return value.lower() == "true"
        if kind is int and float(value) != int(float(value)):
            raise ValueError(value)
        return kind(float(value)) if kind is int else kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"--sample.{name}={value!r}: {name} takes {kind.__name__} values (default {default!r})."
        ) from None


def select_labels(class_names, classes: str) -> list[int]:
    """Label ids of the comma-separated class names in `classes`; all when empty."""
    if not classes:
        return list(range(len(class_names)))
    wanted = [c.strip() for c in classes.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in class_names]
    if unknown:
        raise ValueError(f"Unknown classes {unknown}; this model's classes are {class_names}.")
    return [class_names.index(c) for c in wanted]


def parse_counts(num_per_class: int | str, class_names, classes: str = "") -> dict[str, int]:
    """Images to generate per class name: N for each class in `classes` (all when empty), or
    "name=N,name=N" for counts of their own (then `classes` must be empty)."""
    text = str(num_per_class).strip()
    if "=" not in text:
        try:
            count = int(text)
        except ValueError:
            raise ValueError(
                f"--num_per_class={text!r}; give a count, or name=count pairs like akiec=50,df=80."
            ) from None
        counts = {class_names[label]: count for label in select_labels(class_names, classes)}
    else:
        if classes:
            raise ValueError("--num_per_class=name=count,... names its classes; drop --classes.")
        pairs = [item.partition("=") for item in text.split(",") if item.strip()]
        try:
            counts = {name.strip(): int(count) for name, _, count in pairs}
        except ValueError:
            raise ValueError(
                f"--num_per_class={text!r}: each pair must be name=count, like akiec=50,df=80."
            ) from None
        select_labels(class_names, ",".join(counts))  # Unknown names fail here.
    small = {name: count for name, count in counts.items() if count < 1}
    if small:
        raise ValueError(f"--num_per_class asks for {small}; generate at least one per class.")
    return counts


def run(
    workdir: str,
    num_per_class: int | str,
    step: str | int = "latest",
    classes: str = "",
    seed: int = 0,
    sample_batch_size: int = 256,
    out_dir: str = "",
    exclude_near_copies: bool = False,
    classifier_workdir: str = "",
    quantile: float = 0.01,
    filter_workdir: str = "",
    min_confidence: float = 0.0,
    max_draws: int = 4,
    overwrite: bool = False,
    **settings,
) -> pathlib.Path:
    """The `sample` verb: restores `workdir` at `step` and writes its samples; returns the
    folder. `num_per_class` is a count for each of `classes`, or "name=count,...". `settings`
    are the family's sampler settings (the rest keep their config defaults).
    `exclude_near_copies` draws again any image the memorization audit would call a near-copy of
    the generator's training images (pixels; and `classifier_workdir`'s features when given).
    `filter_workdir` keeps an image only when that classifier run's best checkpoint gives its
    class a probability >= `min_confidence`. A screened slot is drawn at most `max_draws` times,
    then left out. `overwrite` replaces a finished sample in the folder; an unfinished one is
    resumed."""
    out_dir = pathlib.Path(out_dir) if out_dir else pathlib.Path(workdir) / "synthetic"
    if (classifier_workdir or quantile != 0.01) and not exclude_near_copies:
        raise ValueError("--classifier_workdir and --quantile apply with --exclude_near_copies.")
    if bool(filter_workdir) != bool(min_confidence):
        raise ValueError(
            "--filter_workdir and --min_confidence go together: a classifier run and the "
            "probability of its class an image needs to be kept."
        )
    if max_draws < 1:
        raise ValueError(f"--max_draws={max_draws}; draw each image at least once.")
    restored = workdir_lib.load(workdir, step)
    screens = []
    if exclude_near_copies:
        copies = memorization.near_copy_screen(
            restored.config.data, classifier_workdir=classifier_workdir, quantile=quantile
        )
        screens.append(lambda images, labels: (~copies(images, labels), {}))
    if filter_workdir:
        class_names = config_lib.class_names(restored.config)
        screens.append(predict.confidence_screen(filter_workdir, min_confidence, class_names))
    return write_samples(
        restored,
        num_per_class,
        out_dir,
        settings=settings,
        classes=classes,
        seed=seed,
        sample_batch_size=sample_batch_size,
        screen=combined(screens),
        max_draws=max_draws,
        overwrite=overwrite,
    )


def combined(screens):
    """One screen from several (None for none): an image is kept when every screen keeps it;
    their recorded columns are merged."""
    if not screens:
        return None

    def screen(images, labels):
        keep, fields = np.ones(len(images), bool), {}
        for one in screens:
            kept, recorded = one(images, labels)
            keep &= kept
            fields |= recorded
        return keep, fields

    return screen


def _is_sample_file(relative: pathlib.Path) -> bool:
    """Whether `sample` writes files by this name: the manifest, `<class>/<class>_NNNNNN.png`,
    or a temporary file of either left by a kill."""
    name = fileio.target_name(relative.name)
    if len(relative.parts) == 1:
        return name in (synthetic_data.MANIFEST, SCREENING)
    cls = relative.parts[0]
    return len(relative.parts) == 2 and bool(re.fullmatch(rf"{re.escape(cls)}_\d{{6}}\.png", name))


def drop_unplanned(out_dir: pathlib.Path, planned: set[pathlib.Path]) -> None:
    """Deletes the images a killed sample left that this one will not write (it asks for fewer,
    or for other classes): a folder source reads every PNG, not the manifest."""
    if jax.process_index() == 0 and out_dir.is_dir():
        for path in out_dir.glob("*/*.png"):
            if path not in planned:
                path.unlink()
        for folder in out_dir.iterdir():  # A class no longer asked for: an empty folder.
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def prepare_out_dir(out_dir: pathlib.Path, overwrite: bool = False) -> None:
    """Refuses a folder with files `sample` did not write, and a finished sample (its manifest
    written) unless `overwrite`, which deletes that sample's files. An unfinished sample stays,
    to be resumed."""
    if not out_dir.exists():
        return
    files = [p for p in out_dir.rglob("*") if p.is_file()]
    foreign = [p for p in files if not _is_sample_file(p.relative_to(out_dir))]
    if foreign:
        raise FileExistsError(
            f"{out_dir} holds files `sample` did not write ({foreign[0].relative_to(out_dir)}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}); move them away or "
            "pass another --out_dir."
        )
    if (out_dir / synthetic_data.MANIFEST).exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir} holds a finished sample (its {synthetic_data.MANIFEST} is written); pass "
            "--overwrite to replace it, or another --out_dir."
        )
    stale = [p for p in files if overwrite or p.name.endswith(fileio.TMP_SUFFIX)]
    if jax.process_index() == 0:
        for path in stale:
            path.unlink()
    if jax.process_count() > 1:  # Nobody looks for kept images before they are gone.
        multihost_utils.sync_global_devices("sample: stale files deleted")
    if len(stale) < len(files):
        logging.info("%s holds an unfinished sample: keeping its batches whose images all decode, "
                     "drawing the others.", out_dir)  # fmt: skip


def _image_path(out_dir: pathlib.Path, class_name: str, index: int) -> pathlib.Path:
    return out_dir / class_name / f"{class_name}_{index:06d}.png"


def _read_kept(paths, provenance: dict) -> np.ndarray | None:
    """float32 [-1, 1] images of an unfinished sample; None if one is missing or does not
    decode. Raises if one was drawn with other settings (its provenance chunks differ)."""
    images = []
    for path in paths:
        try:
            with Image.open(path) as png:
                png.load()
                drawn_with = {k: png.text.get(k) for k in provenance}
                pixels = np.asarray(png)
        except imaging.DECODE_ERRORS:  # Missing, truncated or not a PNG.
            return None
        if drawn_with != provenance:
            changed = {k: (v, provenance[k]) for k, v in drawn_with.items() if v != provenance[k]}
            raise FileExistsError(
                f"{path.parent.parent} holds an unfinished sample drawn with other settings "
                f"({', '.join(f'{k}: {a} there, {b} now' for k, (a, b) in changed.items())}); "
                "rerun with those, pass --overwrite to start over, or another --out_dir."
            )
        images.append(pixels if pixels.ndim == 3 else pixels[..., None])
    return np.stack(images).astype(np.float32) / 127.5 - 1


def write_samples(
    restored: workdir_lib.Run,
    num_per_class: int | str,
    out_dir: pathlib.Path,
    *,
    settings: dict | None = None,
    classes: str = "",
    seed: int = 0,
    sample_batch_size: int = 256,
    screen=None,
    max_draws: int = 4,
    overwrite: bool = False,
) -> pathlib.Path:
    """Writes `num_per_class` images per class of a restored run (a count for each of `classes`,
    or "name=count,...") into `out_dir`, with the manifest (`prepare_out_dir`'s rules, after
    every argument is checked); `settings` override the sampler's config defaults. `screen`
    ((uint8 images, labels) -> (bool[N] kept, {manifest column: values}), see `combined`) drops
    images: each dropped slot is drawn again, up to `max_draws` draws, then left out."""
    config = restored.config
    class_names = config_lib.class_names(config)
    counts = parse_counts(num_per_class, class_names, classes)
    labels = np.repeat([class_names.index(name) for name in counts], list(counts.values()))
    labels = labels.astype(np.int32)
    settings = sampler_settings(restored, settings)
    if sample_batch_size < 1:
        raise ValueError(f"--sample_batch_size={sample_batch_size}; use 1 or more.")
    # Only now, with every argument checked: --overwrite deletes the finished sample there.
    prepare_out_dir(out_dir, overwrite)
    drop_unplanned(out_dir, {_image_path(out_dir, class_names[c], i) for i, c in enumerate(labels)})
    logging.info("Sampling %d images (%s) from step %d of %s with %s.", len(labels),
                 ", ".join(f"{name} {count}" for name, count in counts.items()), restored.step,
                 restored.workdir, settings)  # fmt: skip
    # Inside every PNG too, so a copied file stays labelled as synthetic.
    provenance = {"synthetic": "true", "generator": config.task, "run": str(restored.workdir),
                  "step": str(restored.step), "seed": str(seed),
                  **{k: str(v) for k, v in settings.items()}}  # fmt: skip
    sample_fn = base.get_predict_fn(restored.task, base.SAMPLE, config.task)
    mesh = parallel.make_mesh()
    variables = state_lib.eval_variables(restored.state)

    def draw(which: np.ndarray, rng, progress: bool = False, on_disk=None):
        return sampling.generate(sample_fn, variables, labels[which], rng,
                                 batch_size=sample_batch_size, mesh=mesh, settings=settings,
                                 progress=progress, on_disk=on_disk)  # fmt: skip

    writer = _ImageWriter(out_dir, labels, class_names, provenance, screen)
    everything = np.arange(len(labels))
    first = draw(everything, jax.random.key(seed), progress=True, on_disk=writer.read_kept)
    dropped = writer.write_draws(everything, first)
    for round_ in range(1, max_draws):
        if not dropped:
            break
        logging.info("Drawing %d screened-out images again (draw %d of %d).", len(dropped),
                     round_ + 1, max_draws)  # fmt: skip
        again = np.asarray(dropped, np.int64)
        rng = jax.random.fold_in(jax.random.key(seed), round_)
        dropped = writer.write_draws(again, draw(again, rng))
    for index in dropped:  # Left out: any file an earlier draw or a killed run left.
        _image_path(out_dir, class_names[labels[index]], index).unlink(missing_ok=True)
    if dropped:
        logging.warning("%d images were screened out %d times; left out.", len(dropped), max_draws)
    rows = [writer.rows[i] for i in sorted(writer.rows)]
    if jax.process_index() == 0:
        if screen is not None:
            summary = screening_summary(rows, counts, writer.drawn, class_names)
            fileio.write_json(out_dir / SCREENING, summary)
            if empty := [name for name, s in summary.items() if s["wanted"] and not s["kept"]]:
                logging.warning(
                    "The screens kept no image of %s in %d draws: data built from %s has no "
                    "synthetic image of these classes. A filtering classifier that never "
                    "predicts a class (its per-class recall says) rejects all of it: train it "
                    "longer or lower --min_confidence.",
                    ", ".join(empty), max_draws, out_dir)  # fmt: skip
        shared = {"family": config.task, "checkpoint_step": restored.step, "seed": seed,
                  "synthetic": "true", **settings}  # fmt: skip
        write_manifest(out_dir, rows, shared, settings)
    if jax.process_count() > 1:  # Others may read the folder next (evaluate does).
        multihost_utils.sync_global_devices("synthesize: images written")
    logging.info("Wrote %d images and manifest.csv to %s.", len(rows), out_dir)
    return out_dir


class _ImageWriter:
    """Writes a sample's images as they are drawn: screens them, keeps their manifest rows
    (`rows`, by index) and counts the draws of each class (`drawn`)."""

    def __init__(self, out_dir, labels, class_names, provenance: dict, screen):
        self.out_dir, self.labels, self.class_names = out_dir, labels, class_names
        self.provenance, self.screen = provenance, screen
        self.rows: dict[int, dict] = {}
        self.drawn = np.zeros(len(class_names), np.int64)

    def read_kept(self, start: int, stop: int) -> np.ndarray | None:
        """The images a killed run left for indices [start, stop), if all are there."""
        paths = [_image_path(self.out_dir, self.class_names[self.labels[i]], i)
                 for i in range(start, stop)]  # fmt: skip
        return _read_kept(paths, self.provenance)

    def write_draws(self, indices: np.ndarray, batches) -> list[int]:
        """Writes the (start, images) batches drawn for `indices`; returns those screened out."""
        dropped = []
        for start, images in batches:
            dropped += self._write(indices[start : start + len(images)], images)
        return dropped

    def _write(self, indices: np.ndarray, images) -> list[int]:
        np.add.at(self.drawn, self.labels[indices], 1)
        keep, fields = np.ones(len(indices), bool), {}
        if self.screen is not None:
            keep, fields = self.screen(grids.to_uint8(images), self.labels[indices])
        new = _write_images(self.out_dir, images[keep], self.labels, self.class_names,
                            indices[keep], self.provenance)  # fmt: skip
        recorded = {k: v[keep] for k, v in fields.items()}
        for position, index in enumerate(indices[keep].tolist()):
            new[index] |= {k: f"{v[position]:.6f}" for k, v in recorded.items()}
        self.rows.update(new)
        return indices[~keep].tolist()


def write_manifest(out_dir: pathlib.Path, rows, shared: dict, settings: dict) -> None:
    """manifest.csv: a row per image, with the `shared` fields and a column per sampler setting;
    written last (atomically), so a folder with one holds a finished sample."""
    with fileio.atomic_write(out_dir / synthetic_data.MANIFEST, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=(*MANIFEST_FIELDS, *settings))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, **shared})


def screening_summary(rows, counts: dict[str, int], drawn: np.ndarray, class_names) -> dict:
    """class -> {"wanted", "drawn", "kept", "acceptance"}: what the screens let through."""
    kept = collections.Counter(row["class"] for row in rows)
    summary = {}
    for name, wanted in counts.items():
        n = int(drawn[class_names.index(name)])
        summary[name] = {"wanted": wanted, "drawn": n, "kept": kept[name],
                         "acceptance": kept[name] / n if n else float("nan")}  # fmt: skip
    return summary


def png_provenance(fields: dict) -> PngImagePlugin.PngInfo:
    """PNG text chunks (tEXt) holding `fields`."""
    info = PngImagePlugin.PngInfo()
    for key, value in fields.items():
        info.add_text(key, value)
    return info


def _write_images(out_dir, images, labels, class_names, indices, provenance) -> dict[int, dict]:
    """float [-1, 1] images (those of `indices` into `labels`) -> PNGs under
    out_dir/<class_name>/ (process 0), each with its provenance and class in text chunks;
    {index: manifest row}."""
    rows = {}
    for image, index in zip(grids.to_uint8(images), indices.tolist(), strict=True):
        name = class_names[labels[index]]
        path = _image_path(out_dir, name, index)
        if jax.process_index() == 0:
            with fileio.atomic_write(path, "wb") as f:
                Image.fromarray(image).save(
                    f, format="PNG", pnginfo=png_provenance({**provenance, "class": name})
                )
        rows[index] = {"file": str(path.relative_to(out_dir)), "class": name,
                       "label": int(labels[index])}  # fmt: skip
    return rows
