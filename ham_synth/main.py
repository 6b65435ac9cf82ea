"""The `ham-synth` command: `ham-synth VERB --config=configs/FILE.py:ARG --workdir=DIR [...]`.

Every verb's flags are defined here, next to the verb table; the library functions they call take
plain keyword arguments. Expected user errors (bad data, missing files or weights, a refused
overwrite, a config typo) print one message and exit with status 2; `--traceback` shows where.

A verb's modules (and JAX with them) are imported only when that verb runs, so the usage and a
flag error print at once.
"""

import logging as std_logging
import os
import pathlib
import sys
from typing import NamedTuple

from absl import app, flags, logging
from ml_collections import config_flags

from ham_synth import config_lib, lazy, xla_cpu

EXIT_USER_ERROR = 2
# Training stopped early (SIGTERM, preemption) after checkpointing; rerunning resumes it.
EXIT_STOPPED = 75  # EX_TEMPFAIL
STOPPED = ("ham_synth.train", "TrainingStopped")
# What the library raises for a user's mistake, each with a message that says how to fix it;
# (module, name) for the project's own, which can only have been raised if the module is loaded.
USER_ERRORS = (
    ValueError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
    ("ham_synth.train", "NonFiniteLossError"),
    ("ham_synth.checkpoint", "CheckpointSaveError"),
    ("ham_synth.study.runner", "StudyError"),
)

config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file and its variant, e.g. configs/vae.py:quickstart.",
    lock_config=True,
)
flags.DEFINE_bool("traceback", False, "On an error, show the traceback, not only the message.")

# Every verb flag: name -> (type, help). Each defaults to None, meaning "the library function's
# own default", so a default lives in one place.
_FLAG_SPECS = {
    "workdir": (str, "The run's folder: checkpoints, metrics, samples, evals."),
    # train
    "allow_config_change": (
        bool,
        "Resume even if the config changed beyond the fields a "
        "resume may change (run_config.RESUMABLE_FIELDS).",
    ),  # fmt: skip
    # sample, evaluate
    "num_per_class": (str, "Images to generate: N for each class, or name=N,name=M,..."),
    "step": (
        str,
        "Checkpoint to restore: latest, best or a step number; default: latest "
        "(classify: best when the run keeps one).",
    ),
    "classes": (str, "Comma-separated class names to generate; default: all."),
    "seed": (int, "Root of the sampling noise (default 0); same seed, same images."),
    "sample_batch_size": (int, "Images per sampling call (default 256)."),
    "out_dir": (str, "Where the images go; default: WORKDIR/synthetic."),
    "exclude_near_copies": (bool, "Draw again images that are near-copies of training images."),
    "filter_workdir": (str, "Keep only images this classifier run labels as their class..."),
    "min_confidence": (float, "...with at least this probability (with --filter_workdir)."),
    "max_draws": (int, "Draws of a screened-out image before it is left out (default 4)."),
    "overwrite": (bool, "Replace a finished sample in --out_dir (an unfinished one resumes)."),
    # evaluate
    "evals": (str, "Comma-separated config.evals entries to run; default: all that are on."),
    "fake_dir": (str, "Images to score: FAKE_DIR/<class_name>/*.png|jpg, classes as the data's."),
    "generator_workdir": (str, "Instead of --fake_dir: a generator to sample, then score."),
    "fid_batch_size": (int, "Images per Inception batch (default 64)."),
    "inception_weights": (str, "Converted weights (.npz); default: the cache."),
    "features": (str, "Feature space: inception (default; FID), classifier or pixels (fd, kd)."),
    "classifier_workdir": (
        str,
        "The ViT run whose features to use (evaluate "
        "--features=classifier, sample --exclude_near_copies, memorization).",
    ),
    # classify
    "images": (str, "A folder of images (sub-folders included) to classify."),
    "out_csv": (str, "Where the predictions go; default: WORKDIR/predictions/<folder>.csv."),
    "batch_size": (int, "Images per batch (default 256)."),
    "tta": (str, "Test-time augmentation: none (default), flips, d4 or views joined by '|'."),
    # memorization
    "quantile": (float, "Near-copy threshold: this quantile of the test images' distances."),
    # study
    "only": (
        str,
        "Stages to run, comma-separated: generators, synthetic, real, filtered, realism, "
        "conditions, memorization, report (default all).",
    ),
    "run": (str, "One run of the study by name (e.g. generators/vae); its dependencies done."),
    "dry_run": (bool, "Print the plan (each run, its status and command) and stop."),
    "rerun_changed": (
        bool,
        "Redo finished runs whose inputs changed, keeping the earlier ones in WORKDIR/replaced/.",
    ),
    # convert-inception
    "torch_weights": (str, "pytorch-fid's Inception .pth; default: in the cache."),
    "download": (bool, "Fetch the .pth from pytorch-fid's release first (needs internet)."),
    "cache_dir": (str, "Where converted weights go; default ~/.cache/ham_synth."),
    # prepare
    "source": (str, "The dataset to prepare: ham10000."),
    "manual_dir": (str, "The user's download, e.g. the unzipped HAM10000."),
    "data_dir": (str, "Where prepared datasets go; default: TFDS's."),
    "image_size": (int, "Stored resolution: 64 (default), 128 or 256."),
    "skip_bad": (bool, "Skip bad rows and images; list them in skipped.csv."),
    "val_fraction": (float, "Share of each class's images in val (default 0.1)."),
    "test_fraction": (float, "Share of each class's images in test (default 0.2)."),
    "split_seed": (int, "Fixes which lesions go to which split (default 0)."),
    "isic2018_test_dir": (str, "Optional: the ISIC 2018 Task 3 test set, as split isic2018_test."),
    "split_by": (str, "Group splits by lesion (default) or image (image-level; optimistic)."),
}
_DEFINE = {
    str: flags.DEFINE_string,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    bool: flags.DEFINE_bool,
}
for _name, (_type, _help) in _FLAG_SPECS.items():
    _DEFINE[_type](_name, None, _help)

_SAMPLE_FLAGS = ("seed", "sample_batch_size")
# `--sample.KEY=VALUE`: a setting of the generator family's sample function (e.g. steps, guidance,
# truncation), passed to the verb as a keyword argument, which checks it against the family.
SAMPLE_SETTING = f"--{config_lib.SAMPLE_SETTING}"


class Verb(NamedTuple):
    """What a verb does, its function ("module:function", imported when the verb runs), and the
    flags passed to it as keyword arguments."""

    help: str
    run: str
    required: tuple[str, ...] = ("config", "workdir")
    optional: tuple[str, ...] = ()
    # A short job that prints its own summary: log warnings only (unless --verbosity is given).
    quiet: bool = False
    # Computes on the accelerators itself; False (study) leaves them untouched at start, so the
    # runs it launches on each GPU find them free.
    uses_devices: bool = True
    # Takes a generator's sampler settings (--sample.KEY=VALUE).
    sample_settings: bool = False


VERBS = {
    "train": Verb(
        "train a model family and run its evaluators; resumes from the workdir's checkpoint",
        "ham_synth.train:run",
        optional=("allow_config_change",),
    ),
    "sample": Verb(
        "class-conditional PNGs + manifest.csv from a generator workdir -> WORKDIR/synthetic",
        "ham_synth.synthesize:run",
        required=("workdir", "num_per_class"),
        optional=(
            "step",
            *_SAMPLE_FLAGS,
            "classes",
            "out_dir",
            "exclude_near_copies",
            "classifier_workdir",
            "quantile",
            "filter_workdir",
            "min_confidence",
            "max_draws",
            "overwrite",
        ),  # fmt: skip
        sample_settings=True,
    ),
    "evaluate": Verb(
        "a run's evaluators (--workdir [--step --evals]), or FID/KID/precision/recall of "
        "--fake_dir (or --generator_workdir's samples) against --config's data",
        "ham_synth.evaluate:evaluate",
        required=("workdir",),
        optional=(
            "config",
            "step",
            "evals",
            "fake_dir",
            "generator_workdir",
            "num_per_class",
            *_SAMPLE_FLAGS,
            "fid_batch_size",
            "inception_weights",
            "features",
            "classifier_workdir",
        ),
        quiet=True,
        sample_settings=True,
    ),
    "classify": Verb(
        "a classifier run's predictions and class probabilities for a folder of images -> CSV "
        "(default step: best when the run keeps one)",
        "ham_synth.predict:run",
        required=("workdir", "images"),
        optional=("step", "out_csv", "batch_size", "tta"),
        quiet=True,
    ),
    "memorization": Verb(
        "nearest training image of every image in --fake_dir (pixels and --classifier_workdir's "
        "features) against --config's data; near-copies, distance ratios -> WORKDIR",
        "ham_synth.memorization:run",
        required=("config", "workdir", "fake_dir", "classifier_workdir"),
        optional=("quantile",),
        quiet=True,
    ),
    "study": Verb(
        "generators -> synthetic sets -> classifiers over seeds -> WORKDIR/report.md; skips "
        "finished runs, resumes interrupted ones",
        "ham_synth.study.runner:run",
        optional=("only", "dry_run", "run", "rerun_changed"),
        uses_devices=False,
    ),
    "convert-inception": Verb(
        "pytorch-fid's Inception weights -> ~/.cache/ham_synth (--download or --torch_weights)",
        "ham_synth.evaluators.convert_inception:run",
        required=(),
        optional=("torch_weights", "download", "cache_dir"),
        quiet=True,
    ),
    "prepare": Verb(
        "a manual download -> a prepared dataset; prints split counts, writes an example grid",
        "ham_synth.data.prepare:run",
        required=("source", "manual_dir"),
        optional=(
            "data_dir",
            "image_size",
            "skip_bad",
            "val_fraction",
            "test_fraction",
            "split_seed",
            "isic2018_test_dir",
            "split_by",
        ),
        quiet=True,
    ),
}


def _is_one_of(error: BaseException, kinds) -> bool:
    """isinstance over `kinds`: classes, or (module, name) of classes in modules already loaded."""
    classes = [
        getattr(sys.modules[kind[0]], kind[1]) if isinstance(kind, tuple) else kind
        for kind in kinds
        if not isinstance(kind, tuple) or kind[0] in sys.modules
    ]
    return isinstance(error, tuple(classes))


def _initialize_distributed() -> None:
    """Joins a multi-host job when launch/run_multihost.sh (or SLURM) describes one."""
    import jax  # noqa: PLC0415  (a verb's imports load when it runs)

    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def _log_devices() -> None:
    import jax  # noqa: PLC0415

    logging.info(
        "JAX %s: process %d of %d, %d local / %d global devices (%s).",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )


def _is_narration(record: std_logging.LogRecord) -> bool:
    """orbax's notes on every save and on read-only restores, and TFDS's below errors (its
    writer's progress, its advice to install OpenCV, its note that a dataset folder is new)."""
    path, level = record.pathname, record.levelno
    if "/orbax/" in path:
        return level < std_logging.WARNING or "read only" in str(record.msg).replace("_", " ")
    return "/tensorflow_datasets/" in path and level < std_logging.ERROR


def _quiet_library_logs(verb: Verb) -> None:
    logging.get_absl_handler().addFilter(lambda record: not _is_narration(record))
    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.ERROR)  # Backend probes.
    if verb.quiet and not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not sys.stderr.isatty():  # Progress bars in a log file are noise; keep them in terminals.
        import tensorflow_datasets as tfds  # noqa: PLC0415

        tfds.disable_progress_bar()


def _usage() -> str:
    lines = ["usage: ham-synth VERB --FLAG=VALUE ... [--config.x.y=V] [--traceback]", "verbs:"]
    for name, verb in VERBS.items():
        flag_list = [f"--{f}" for f in verb.required] + [f"[--{f}]" for f in verb.optional]
        flag_list += [f"[{SAMPLE_SETTING}KEY=VALUE]"] * verb.sample_settings
        lines.append(f"  {name:18s} {verb.help}")
        lines += [f"  {'':18s} {' '.join(flag_list)}"] if flag_list else []
    return "\n".join(lines)


def _fail(verb: str, message: str) -> None:
    print(f"ham-synth {verb}: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def _verb_kwargs(verb_name: str, verb: Verb) -> dict:
    """The verb's flags as keyword arguments; flags left unset are left to the function."""
    given = [n for n in ("config", *_FLAG_SPECS) if flags.FLAGS[n].present]
    stray = [f"--{n}" for n in given if n not in verb.required + verb.optional]
    if stray:
        raise ValueError(f"{' '.join(stray)} do(es) not apply to `{verb_name}`.\n{_usage()}")
    if flags.FLAGS["config"].present:  # Checked here: reading the flag would raise a bare OSError.
        spec = flags.FLAGS["config"].config_filename
        file = spec.split(":")[0]
        if not pathlib.Path(file).is_file():
            raise FileNotFoundError(
                f"--config={spec}: no config file at {file}; the project's are in configs/, "
                "e.g. --config=configs/vae.py:quickstart."
            )
    missing = [f"--{n}" for n in verb.required if flags.FLAGS[n].value is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)} required.\n{_usage()}")
    names = verb.required + verb.optional
    return {n: flags.FLAGS[n].value for n in names if flags.FLAGS[n].value is not None}


def split_sample_settings(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--sample.KEY=VALUE` arguments as {KEY: VALUE} (strings; the verb converts them to the
    family's types), apart from the arguments absl parses."""
    settings, rest = {}, []
    for arg in args:
        if not arg.startswith(SAMPLE_SETTING):
            rest.append(arg)
            continue
        key, equals, value = arg.removeprefix(SAMPLE_SETTING).partition("=")
        if not key or not equals:
            raise ValueError(f"{arg}: write a sampler setting as {SAMPLE_SETTING}KEY=VALUE.")
        if key in _FLAG_SPECS:
            raise ValueError(f"{arg}: {key} is a flag of its own; pass --{key}={value}.")
        settings[key] = value
    return settings, rest


def _main(verb_name: str, argv, settings: dict[str, str]) -> None:
    verb = VERBS[verb_name]
    try:
        if len(argv) > 1:
            raise ValueError(f"Unexpected arguments: {argv[1:]}")
        kwargs = _verb_kwargs(verb_name, verb)
        if settings and not verb.sample_settings:
            given = " ".join(f"{SAMPLE_SETTING}{k}" for k in settings)
            raise ValueError(f"{given}: `{verb_name}` takes no sampler settings.")
        kwargs |= settings
        _quiet_library_logs(verb)
        run = lazy.resolve(verb.run)
        if verb.uses_devices:
            _initialize_distributed()
            _log_devices()
        run(**kwargs)
    except Exception as error:
        if _is_one_of(error, [STOPPED]):
            print(f"ham-synth {verb_name}: {error}", file=sys.stderr)
            sys.exit(EXIT_STOPPED)
        if flags.FLAGS.traceback or not _is_one_of(error, USER_ERRORS):
            raise
        _fail(verb_name, f"{_plain_message(error)}\n(run with --traceback to see where)")


def _plain_message(error: BaseException) -> str:
    """The text of an error, unwrapped from the exceptions ml_collections nests around a
    config typo (AttributeError(KeyError("'x'\nDid you mean ..."))), which str() quotes."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    if isinstance(error, KeyError | AttributeError) and error.args:
        return str(error.args[0])
    return str(error)


def _parse_flags(verb_name: str, argv: list[str]) -> list[str]:
    """absl's parsing, with a mistyped flag or config field answered in one line, status 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        _fail(verb_name, _without_traceback(_plain_message(error)))
    except (AttributeError, KeyError) as error:  # A --config.x.y=... naming no field.
        _fail(verb_name, _missing_field_message(error, argv))
    except (ValueError, TypeError) as error:  # From --config.x.y=...
        _fail(verb_name, f"config override: {_plain_message(error)}")


def _without_traceback(message: str) -> str:
    """A flag error whose text embeds a traceback (ml_collections' config-file errors): the
    words before it and its last line, the error itself."""
    head, marker, trace = message.partition("Traceback (most recent call last):")
    if not marker:
        return message
    return f"{head.strip()} {trace.strip().splitlines()[-1]}"


def _missing_field_message(error: BaseException, argv: list[str]) -> str:
    """A --config.x.y=... override that names no field of the config: the flag, the field, and
    ml_collections' "Did you mean" when it has one."""
    field, newline, hint = _plain_message(error).partition("\n")
    field = field.strip("'\"")
    flag = next(
        (arg for arg in argv if arg.startswith("--config.") and field in _override_path(arg)), ""
    )
    where = f"config override {flag}" if flag else "config override"
    return f"{where}: the config has no field {field!r}{newline}{hint}"


def _override_path(arg: str) -> list[str]:
    """The field names of a --config.x.y=VALUE flag: ['x', 'y']."""
    return arg.removeprefix("--config.").partition("=")[0].split(".")


def run() -> None:
    """Console-script entry point."""
    xla_cpu.apply()  # Before any verb imports JAX.
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb not in VERBS:
        print(f"Unknown verb {verb!r}.\n{_usage()}" if verb else _usage(), file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    try:
        settings, args = split_sample_settings(sys.argv[2:])
    except ValueError as error:
        _fail(verb, str(error))
    app.run(
        lambda argv: _main(verb, argv, settings),
        argv=[f"ham-synth {verb}", *args],
        flags_parser=lambda argv: _parse_flags(verb, argv),
    )


if __name__ == "__main__":
    run()
