"""Simulates 8 CPU devices with cheap compiles (before jax is imported), shares one compilation
cache across the session's processes, and loads tiny configs.

Tiers: `python -m pytest -q` runs everything (CI); `python -m pytest -q -m "not slow"` leaves out
subprocess, multi-device, whole-training and benchmark tests, for the edit-test loop."""

import atexit
import fcntl
import os
import pathlib
import shutil
import socket
import struct
import tempfile

from ham_synth import xla_cpu

# Tests compile far more than they compute, so they ask XLA:CPU for its cheapest code generation:
# it halves compile time (the GAN's 8-device test: 106 -> 72 s of CPU), and the arithmetic stays
# IEEE either way. HAM_SYNTH_TEST_XLA_OPT=1 tests with XLA's default optimization instead.
FAST_COMPILE = (
    ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
    if os.environ.get("HAM_SYNTH_TEST_XLA_OPT") != "1"
    else ()
)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", *FAST_COMPILE]
).strip()
# Subprocess tests inherit this, so a shape compiled once is not compiled again.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ham_synth_jax_cache_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# One OpenMP thread for the PyTorch peers (and subprocesses): with both cores busy (two xdist
# workers), two spinning threads each made a tiny diffusers step take 2.9 s instead of 17 ms.
os.environ.setdefault("OMP_NUM_THREADS", "1")
xla_cpu.apply()  # As the entry points do (ham-synth, tools/), before JAX's backend starts.

import pytest  # noqa: E402
from absl import flags  # noqa: E402

from ham_synth import config_lib  # noqa: E402

# grain workers and absl-flag readers need parsed flags; pytest owns argv.
flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(spec: str, **overrides):
    """`load_config("vae.py:smoke", **{"train.total_steps": 3})` from the repo's configs/."""
    config = config_lib.load_config(str(REPO / "configs" / spec))
    config.update_from_flattened_dict(overrides)
    return config


def first_train_step(config):
    """(logits of the first batch at init, the batch, train/loss of the first step, the built
    config) of a one-device classifier run."""
    import jax
    import numpy as np

    from ham_synth import parallel, train, workdir
    from ham_synth import state as state_lib
    from ham_synth.tasks import base

    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    batch = parallel.to_global_batch(next(iter(built.dataset)), mesh)
    predict = built.task.predict_fns[base.PREDICT]
    logits = np.asarray(predict(state_lib.eval_variables(state), batch["image"]))
    _, metrics = train.make_train_step(built.task, mesh)(state, batch, jax.random.key(1))
    return logits, batch, float(metrics["train/loss"]), built.config


# The heaviest modules first (by `--durations` on the 2-core machine): the two workers then
# finish together, with the light modules filling in at the end. The rest keep collection
# order; a module missing from this list only runs later.
HEAVIEST = (
    "tests/test_synthesize.py",
    "tests/test_reliability.py",
    "tests/test_gpu_check.py",
    "tests/test_mixed_precision.py",
    "tests/tasks/test_gan.py",
    "tests/study/test_report.py",
    "tests/test_evaluate.py",
    "tests/tasks/test_classify.py",
)


def pytest_collection_modifyitems(items):
    def rank(item):
        module = item.nodeid.split("::")[0]
        return HEAVIEST.index(module) if module in HEAVIEST else len(HEAVIEST)

    items.sort(key=rank)  # Stable: the order within a rank is kept.


@pytest.fixture
def repo() -> pathlib.Path:
    return REPO


def shared_run(tmp_path_factory, spec: str) -> pathlib.Path:
    """The workdir of one training run of config `spec`, made by whichever xdist worker asks
    first and read by every test of the session (the others wait on a file lock, as xdist's
    docs suggest). Tests read it and copy it before they change anything."""
    from ham_synth import train  # noqa: PLC0415  (after XLA_FLAGS above)

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # This session's folder, above each worker's own.
    name = spec.replace(".py:", "_")
    workdir, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(workdir, ignore_errors=True)  # A worker that died halfway.
            train.train_and_evaluate(load_config(spec), workdir)
            done.touch()
    return workdir


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory) -> pathlib.Path:
    """One `vit.py:smoke` training run (8 devices; val at steps 3 and 6, then test and attention
    on the best checkpoint), shared read-only by the tests that inspect its outputs."""
    return shared_run(tmp_path_factory, "vit.py:smoke")


@pytest.fixture(scope="session")
def vae_run(tmp_path_factory) -> pathlib.Path:
    """One `vae.py:smoke` training run (8 devices, checkpoints at steps 3 and 6, a sample grid),
    shared read-only as `vit_run` is."""
    return shared_run(tmp_path_factory, "vae.py:smoke")


def tensorboard_events(directory):
    """Every Event in the TFRecord files under `directory`, file by file in name order."""
    from tensorboardX.proto import event_pb2  # noqa: PLC0415

    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            events.append(event_pb2.Event.FromString(data[12 : 12 + length]))
            data = data[16 + length :]
    return events


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
