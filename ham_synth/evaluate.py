"""`ham-synth evaluate`, in two modes.

- A run: `--workdir=W [--step=best|latest|N] [--evals=a,b]` restores W (workdir.load) and runs
  its configured evaluators; each writes W/evals/<name>/step_NNNNNNN.json.
- Images: `--config --workdir --fake_dir=DIR` (or `--generator_workdir=G --num_per_class=N`, which
  samples G into WORKDIR/eval/synthetic first) scores a folder against `config.data`: FID, KID and
  precision/recall, overall and per class, in WORKDIR/eval/metrics.json and a printed table.
  `--features=classifier --classifier_workdir=V` scores in a ViT run's feature space instead
  (`fd`, `kd`: not FID), `--features=pixels` in average-pooled pixels.
"""

import pathlib
import warnings

import jax
import ml_collections
import numpy as np
from absl import logging

from ham_synth import evaluators, fileio, parallel, synthesize
from ham_synth import workdir as workdir_lib
from ham_synth.data import image_folder, sources
from ham_synth.data import synthetic as synthetic_data
from ham_synth.evaluators import features as features_lib
from ham_synth.evaluators import fid, realism


def evaluate(
    workdir: str,
    config: ml_collections.ConfigDict | None = None,
    fake_dir: str | None = None,
    generator_workdir: str | None = None,
    num_per_class: int | None = None,
    step: str = "latest",
    evals: str = "",
    fid_batch_size: int = 64,
    inception_weights: str | None = None,
    features: str | None = None,
    classifier_workdir: str | None = None,
    **sample_options,
) -> dict:
    """The `evaluate` verb; returns the metrics. `sample_options` (seed, sample_batch_size and
    sampler settings) go to synthesize.run."""
    if fake_dir is None and generator_workdir is None:
        if config is not None:
            raise ValueError(
                "Pass --fake_dir (a folder of images) or --generator_workdir (a trained generator "
                "to sample from) to score images against --config; to evaluate a run, pass only "
                "its --workdir."
            )
        sampler_flags = [sample_flag(k) for k, v in sample_options.items() if v is not None]
        given = {"features": features, "classifier_workdir": classifier_workdir}
        sampler_flags += [f"--{k}" for k, v in given.items() if v]
        if num_per_class or sampler_flags:
            raise ValueError(
                f"{', '.join(sampler_flags + ['--num_per_class'] * bool(num_per_class))} only "
                "apply to scoring images (--fake_dir or --generator_workdir); a run's evaluators "
                "take theirs from its config."
            )
        return evaluate_run(workdir, step, [n for n in evals.split(",") if n] or None)
    if config is None:
        raise ValueError("Scoring images needs --config: its data.* names the real images.")
    if evals or step != "latest":
        raise ValueError("--evals and --step apply to a run (only --workdir), not to images.")
    return score_images(
        config,
        workdir,
        fake_dir,
        generator_workdir,
        num_per_class,
        fid_batch_size,
        inception_weights,
        features or features_lib.INCEPTION,
        classifier_workdir or "",
        **sample_options,
    )


def sample_flag(name: str) -> str:
    """The command-line flag of a `sample_options` entry."""
    return f"--{name}" if name in ("seed", "sample_batch_size") else f"--sample.{name}"


# --- A run's evaluators ---


def evaluate_run(workdir: str, step: str = "latest", names=None) -> dict[str, float]:
    """Restores `workdir` at `step` and runs the evaluators `names` (None: all not off)."""
    run = workdir_lib.load(workdir, step)
    mesh = parallel.make_mesh()
    entries = evaluators.from_config(run.config, run.task, mesh, run.workdir, names)
    if not entries:
        raise ValueError(
            f"{workdir}'s config.evals has no evaluator to run; name one with --evals."
        )
    logging.info("Evaluating %s at step %d with %s.", workdir, run.step, [e.name for e in entries])
    scalars = {}
    for entry in entries:
        scalars.update(evaluators.run_entry(entry, run.state, run.step)[0])
    if jax.process_index() == 0:
        print(f"{workdir} at step {run.step}:")
        for key, value in scalars.items():
            print(f"  {key:40s} {value:.6g}")
        print(f"Wrote the evaluators' outputs under {run.workdir}.")
    return scalars


# --- A folder of images against a split ---


def sample_fake_dir(generator_workdir: str, num_per_class, out: pathlib.Path, **options) -> str:
    """Samples `num_per_class` images per class from a generator workdir into `out`."""
    if not num_per_class:
        raise ValueError("--generator_workdir needs --num_per_class: how many images per class.")
    if (out / synthetic_data.MANIFEST).exists():
        raise FileExistsError(
            f"{out} already holds samples: score them with --fake_dir={out}, or move the folder "
            "away (or use another --workdir) to sample again."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return str(synthesize.run(generator_workdir, num_per_class, out_dir=str(out), **options))


def format_table(metrics: dict) -> str:
    columns = ("n_real", "n_fake", *[k for k in ("fid", "fd", "kid", "kd") if k in
               metrics["overall"]], "precision", "recall")  # fmt: skip
    matched = [("class-matched", metrics["matched"])] if "matched" in metrics else []
    rows = [("overall", metrics["overall"]), *matched, *metrics["per_class"].items()]
    lines = [f"{'':12s}" + "".join(f"{c:>11s}" for c in columns)]
    for name, row in rows:
        cells = "".join(
            f"{row[c]:>11d}" if isinstance(row[c], int) else f"{row[c]:>11.4f}" for c in columns
        )
        lines.append(f"{name:12s}{cells}")
    return "\n".join(lines)


def score_images(
    config: ml_collections.ConfigDict,
    workdir: str,
    fake_dir: str | None,
    generator_workdir: str | None,
    num_per_class: int | None,
    fid_batch_size: int = 64,
    inception_weights: str | None = None,
    features: str = features_lib.INCEPTION,
    classifier_workdir: str = "",
    **sample_options,
) -> dict:
    """Scores `fake_dir`, or samples from `generator_workdir` and scores that, against
    `config.data` in the `features` space (Inception: FID and KID; others: fd and kd)."""
    if (fake_dir is None) == (generator_workdir is None):
        raise ValueError(
            "Pass one of --fake_dir (a folder of images) or --generator_workdir (a trained "
            "generator to sample from)."
        )
    sampler_flags = [sample_flag(k) for k, v in sample_options.items() if v is not None]
    if fake_dir and sampler_flags:
        raise ValueError(f"{', '.join(sampler_flags)} only apply with --generator_workdir.")
    mesh = parallel.make_mesh()
    net = features_lib.get_feature_net(
        features, mesh, inception_weights=inception_weights or "",
        classifier_workdir=classifier_workdir,
    )  # fmt: skip
    out = pathlib.Path(workdir) / "eval"
    if generator_workdir:
        fake_dir = sample_fake_dir(
            generator_workdir, num_per_class, out / "synthetic", **sample_options
        )
    batch_size = parallel.round_to_devices(fid_batch_size, mesh)

    real, real_labels, class_names = features_lib.real_features(net, config.data, batch_size, mesh)
    fake_source = sources.get_source(image_folder.folder_like(config.data, fake_dir, class_names))
    fake, fake_labels = features_lib.source_features(net, fake_source, batch_size, mesh)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = {
            "overall": fid.compute_metrics(real, fake, seed=config.seed),
            "per_class": fid.per_class_metrics(
                real, real_labels, fake, fake_labels, class_names, seed=config.seed
            ),
        }
        matched = fid.class_matched(real_labels, fake_labels, seed=config.seed)
        if matched is not None:
            metrics["matched"] = fid.compute_metrics(
                real[matched[0]], fake[matched[1]], seed=config.seed
            )
    metrics = {
        "feature_space": net.name,
        "overall": realism.space_names(metrics["overall"], net.is_inception),
        # Both sides subsampled to the real split's class mix; absent when the images lack a
        # class the split has.
        **(
            {"matched": realism.space_names(metrics["matched"], net.is_inception)}
            if "matched" in metrics
            else {}
        ),  # fmt: skip
        "per_class": {
            name: realism.space_names(row, net.is_inception)
            for name, row in metrics["per_class"].items()
        },
    }
    metrics["warnings"] = sorted({str(w.message) for w in caught})
    metrics["real"] = {"data": config.data.to_dict()}
    metrics["fake"] = {"dir": fake_dir, "generator_workdir": generator_workdir}
    if generator_workdir:
        given = {k: v for k, v in sample_options.items() if v is not None}
        metrics["fake"]["sampling"] = {"num_per_class": num_per_class, **given}
    if jax.process_index() == 0:
        write_outputs(out, metrics, real, fake)
    return metrics


def write_outputs(out: pathlib.Path, metrics: dict, real: np.ndarray, fake: np.ndarray) -> None:
    """metrics.json, both sides' FID statistics (which pytorch-fid reads), and a printed table."""
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(out / "metrics.json", metrics)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # The small-sample warning is already in metrics.
        fid.save_statistics(out / "real_stats.npz", *fid.compute_statistics(real))
        fid.save_statistics(out / "fake_stats.npz", *fid.compute_statistics(fake))
    for message in metrics["warnings"]:
        logging.warning("%s", message)
    print(format_table(metrics))
    print(f"Wrote {out / 'metrics.json'}")
