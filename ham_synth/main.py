"""The `ham-synth` command: `ham-synth VERB --config=configs/FILE.py:ARG --workdir=DIR [...]`.

Parses the verb and the flags, joins a multi-host job when the launcher asks, and calls the
verb's one function.
"""

import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ham_synth import train

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file and its variant, e.g. configs/vae.py:quickstart.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")

# verb -> (what it does, function of (config, workdir)).
VERBS = {
    "train": (
        "train a model family; resumes from the workdir's checkpoint",
        train.train_and_evaluate,
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
    lines = [
        "usage: ham-synth VERB --config=configs/FILE.py[:ARG] --workdir=DIR [--config.x.y=V]",
        "verbs:",
    ]
    lines += [f"  {verb:10s} {help_text}" for verb, (help_text, _) in VERBS.items()]
    return "\n".join(lines)


def _main(verb: str, argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or _WORKDIR.value is None:
        raise app.UsageError("Both --config and --workdir are required.\n" + _usage())
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
    VERBS[verb][1](_CONFIG.value, _WORKDIR.value)


def run() -> None:
    """Console-script entry point."""
    verb = sys.argv[1] if len(sys.argv) > 1 else ""
    if verb not in VERBS:
        print(f"Unknown verb {verb!r}.\n{_usage()}" if verb else _usage(), file=sys.stderr)
        sys.exit(2)
    app.run(lambda argv: _main(verb, argv), argv=[f"ham-synth {verb}", *sys.argv[2:]])


if __name__ == "__main__":
    run()
