"""The `ham-synth` command: `ham-synth VERB --config=configs/FILE.py:ARG --workdir=DIR [...]`.

Parses the verb and the flags, joins a multi-host job when the launcher asks, and calls the
verb's one function with the flags it declares.
"""

import logging as std_logging
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ham_synth import evaluate, synthesize, train
from ham_synth.data import prepare
from ham_synth.evaluators import convert_inception

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file and its variant, e.g. configs/vae.py:quickstart.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")


class Verb(NamedTuple):
    """What a verb does, its function, and the flags passed to it as keyword arguments (a verb's
    own flags are defined in its module)."""

    help: str
    run: Callable[..., object]
    required: tuple[str, ...] = ("config", "workdir")
    optional: tuple[str, ...] = ()


# A plain (help, function of (config, workdir)) tuple is a Verb with the default flags.
VERBS = {
    "train": Verb(
        "train a model family; resumes from the workdir's checkpoint",
        train.train_and_evaluate,
    ),
    "sample": Verb(
        "class-conditional PNGs + manifest.csv from a generator workdir -> WORKDIR/synthetic",
        synthesize.run,
        required=("workdir", "num_per_class"),
        optional=synthesize.OPTIONAL_FLAGS,
    ),
    "convert-inception": Verb(
        "pytorch-fid's Inception weights -> ~/.cache/ham_synth (--download or --torch_weights)",
        convert_inception.run,
        required=(),
        optional=convert_inception.OPTIONAL_FLAGS,
    ),
    "evaluate": Verb(
        "FID, KID, precision/recall of --fake_dir (or samples of --generator_workdir) against "
        "config.data -> WORKDIR/eval",
        evaluate.evaluate,
        required=("config", "workdir"),
        optional=evaluate.OPTIONAL_FLAGS,
    ),
    "prepare": Verb(
        "a manual download -> a prepared dataset; prints split counts, writes an example grid",
        prepare.run,
        required=("source", "manual_dir"),
        optional=prepare.OPTIONAL_FLAGS,
    ),
}


def _initialize_distributed() -> None:
    """Joins a multi-host job when launch/run_multihost.sh (or SLURM) describes one."""
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
        )
    elif int(env.get("SLURM_NTASKS", "1")) > 1:
        jax.distributed.initialize()


def _quiet_library_logs() -> None:
    """orbax narrates every save at INFO; keep its warnings, drop the narration."""
    logging.get_absl_handler().addFilter(
        lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname
    )


def _usage() -> str:
    lines = ["usage: ham-synth VERB --FLAG=VALUE ... [--config.x.y=V]", "verbs:"]
    for name, entry in VERBS.items():
        verb = Verb(*entry)
        flag_list = [f"--{f}" for f in verb.required] + [f"[--{f}]" for f in verb.optional]
        lines.append(f"  {name:18s} {verb.help}")
        lines += [f"  {'':18s} {' '.join(flag_list)}"] if flag_list else []
    return "\n".join(lines)


def _main(verb: str, argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    verb = Verb(*VERBS[verb])
    missing = [f"--{name}" for name in verb.required if flags.FLAGS[name].value is None]
    if missing:
        raise app.UsageError(f"{' and '.join(missing)} required.\n" + _usage())
    _quiet_library_logs()
    _initialize_distributed()
    logging.info(
        "JAX %s: process %d of %d, %d local / %d global devices (%s).",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.default_backend(),
    )
    verb.run(**{name: flags.FLAGS[name].value for name in verb.required + verb.optional})


def run() -> None:
    """Console-script entry point."""
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb not in VERBS:
        print(f"Unknown verb {verb!r}.\n{_usage()}" if verb else _usage(), file=sys.stderr)
        sys.exit(2)
    app.run(lambda argv: _main(verb, argv), argv=[f"ham-synth {verb}", *sys.argv[2:]])


if __name__ == "__main__":
    run()
