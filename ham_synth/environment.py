"""What a run ran on: package versions, JAX's backend and devices, the host. Training runs
write it to W/environment.json beside config.json; the study's report quotes it."""

import importlib.metadata
import json
import os
import pathlib
import platform

import jax

from ham_synth import fileio

PACKAGES = ("ham_synth", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")
FILE = "environment.json"


def describe() -> dict:
    """Versions, backend, device kinds and counts, XLA flags and ham_synth's environment
    switches, and host of this process."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    kinds = sorted({d.device_kind for d in jax.local_devices()})
    return {
        "python": platform.python_version(),
        "packages": versions,
        "backend": jax.default_backend(),
        "device_kinds": kinds,
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # With ham_synth's XLA:CPU default.
        # ham_synth's own switches ($HAM_SYNTH_CUDNN_ATTENTION, ...), where a run set them.
        "settings": {k: v for k, v in sorted(os.environ.items()) if k.startswith("HAM_SYNTH_")},
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
    }


def write(workdir: pathlib.Path) -> None:
    fileio.write_json(pathlib.Path(workdir) / FILE, describe())


def read(workdir: pathlib.Path) -> dict | None:
    path = pathlib.Path(workdir) / FILE
    return json.loads(path.read_text()) if path.exists() else None


def summary(env: dict) -> str:
    """One line: e.g. 'cpu (cpu x1), 1 process(es) on vm; ham_synth 0.1.0, jax ...; Python
    3.11.7'."""
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items())
    return (
        f"{env['backend']} ({', '.join(env['device_kinds'])} x{env['global_devices']}), "
        f"{env['processes']} process(es) on {env['host']}; {packages}; Python {env['python']}"
    )
