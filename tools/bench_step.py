"""Times one config's jitted train step (compile, steady-state ms, images/sec, peak memory), to
compare configs, batch sizes and machines with the trainer's own mesh, task and step.

    python tools/bench_step.py --config=configs/vae.py:smoke --steps=50 --out=bench.json
    python tools/bench_step.py --config=configs/vae.py:quickstart --config.train.batch_size=256

A fixed set of batches is fetched and put on the mesh before timing, so data loading is not timed.
"""

import datetime
import json
import resource
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ham_synth import parallel, train, workdir

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A config file and its variant, e.g. configs/vae.py:smoke.", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps, after compiling and the warm-up steps.")
# XLA:CPU steps speed up over their first tens of steps (1.3 s at step 40 vs 2.2 s at step 5 for
# vae.py:quickstart at 64 px), so a CPU figure needs a long warm-up.
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", 10, "Untimed steps after compiling.")
_BATCHES = flags.DEFINE_integer("batches", 4, "Distinct batches fetched up front and cycled.")
_OUT = flags.DEFINE_string("out", "bench_step.json", "Where the JSON results go.")


def _peak_memory(mesh) -> tuple[int, str]:
    """(bytes, source): the device allocator's peak where the backend reports it, else max RSS."""
    stats = [d.memory_stats() for d in mesh.local_devices]
    if all(s and "peak_bytes_in_use" in s for s in stats):
        return max(s["peak_bytes_in_use"] for s in stats), "device peak_bytes_in_use (max)"
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS"


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/vae.py:smoke")
    if _STEPS.value < 1 or _BATCHES.value < 1:
        raise app.UsageError("--steps and --batches must be at least 1.")
    mesh = parallel.make_mesh(config.train.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    replicated = parallel.replicated(mesh)
    init_rng, loop_rng = jax.random.split(jax.random.key(config.seed))

    # The trainer's own setup: data -> config with class names -> task -> state.
    built = workdir.build(config, mesh)
    config = built.config
    data_iter = iter(built.dataset)
    batches = [parallel.to_global_batch(next(data_iter), mesh) for _ in range(_BATCHES.value)]
    rngs = [
        jax.device_put(jax.random.fold_in(loop_rng, i), replicated) for i in range(len(batches))
    ]
    state = workdir.initial_state(built, init_rng, mesh)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))

    start = time.perf_counter()
    lowered = train.make_train_step(built.task, mesh).lower(state, batches[0], rngs[0])
    lower_s = time.perf_counter() - start
    step = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s

    times = []
    for i in range(_WARMUP_STEPS.value + _STEPS.value):
        start = time.perf_counter()
        # The state is donated: each step consumes it and returns the next one.
        state, metrics = step(state, batches[i % len(batches)], rngs[i % len(rngs)])
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    times_ms = np.asarray(times[_WARMUP_STEPS.value :]) * 1e3

    median_ms = float(np.median(times_ms))
    peak_bytes, peak_source = _peak_memory(mesh)
    device = mesh.devices.flat[0]
    results = {
        "config": config_flags.get_config_filename(flags.FLAGS["config"]),
        "overrides": config_flags.get_override_values(flags.FLAGS["config"]),
        "task": config.task,
        "image_size": config.data.image_size,
        "global_batch": config.train.batch_size,
        "device_count": mesh.size,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
        "num_params": int(num_params),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "data_loading_timed": False,
        "distinct_batches": len(batches),
        "lower_s": lower_s,  # Tracing and lowering to StableHLO.
        "compile_s": compile_s,  # XLA compilation of the lowered step.
        "warmup_steps": _WARMUP_STEPS.value,
        "timed_steps": _STEPS.value,
        "step_ms": {
            "mean": float(np.mean(times_ms)),
            "median": median_ms,
            "p90": float(np.percentile(times_ms, 90)),
        },
        "images_per_sec": config.train.batch_size / (median_ms / 1e3),
        "peak_memory_bytes": int(peak_bytes),
        "peak_memory_source": peak_source,
        "final_loss": float(metrics["train/loss"]),
    }
    print(
        f"{results['config']} on {mesh.size} x {device.device_kind} ({results['backend']}): "
        f"{num_params:,} params, batch {config.train.batch_size} at {config.data.image_size}px\n"
        f"  lower {lower_s:.2f} s, compile {compile_s:.2f} s; step median {median_ms:.2f} ms "
        f"(mean {results['step_ms']['mean']:.2f}, p90 {results['step_ms']['p90']:.2f}) over "
        f"{_STEPS.value} steps; {results['images_per_sec']:,.0f} images/s\n"
        f"  peak memory {peak_bytes / 2**20:,.1f} MiB ({peak_source})"
    )
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
