"""Side-by-side speed of ham_synth against the PyTorch tools researchers use, on whatever device
is present, in one process: the DDPM UNet train step vs diffusers' UNet2DModel, the ViT train
step vs timm, Inception features vs pytorch-fid, the samplers' images/s, and the input pipeline
against what the step consumes.

    python tools/benchmark.py                           # CPU sizes; runs/benchmark/cpu/results.*
    python tools/benchmark.py --preset=gpu --dtypes=float32,bfloat16 --full_10k
    python tools/benchmark.py --preset=tiny --repeats=1  # seconds; what the test suite runs
    python tools/benchmark.py --cases=config --config=configs/vae.py:quickstart  # any config

`--cases=config` times one config's train step as the trainer builds it (its data, mesh, task and
state), with the process's max RSS: the figure to compare configs, batch sizes and machines.

Every measurement goes through one harness (`measure`): compile (XLA) or first call (PyTorch
eager), warm-up, then `repeats` rounds of `steps` timed calls, the two sides interleaved round by
round; the table gives the median over rounds of each round's median and the spread (min-max).

MFU = model FLOPs per step / step time / the peak of a large matmul in the same dtype, measured
on the same device in the same run. The FLOPs are XLA's cost_analysis of the lowered JAX step,
which counts every conv and matmul on any backend; the PyTorch side runs the same shape and is
given the same count. Peak memory: XLA's memory_analysis of the compiled step (arguments +
outputs + temporaries) for JAX; torch.cuda.max_memory_allocated on a
GPU for PyTorch (not measured on CPU). Needs the test extra (torch, diffusers, pytorch-fid, timm).
"""

import csv
import dataclasses
import datetime
import functools
import importlib.metadata
import os
import pathlib
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ham_synth import config_lib, fileio, parallel, tasks, train, workdir, xla_cpu
from ham_synth import state as state_lib
from ham_synth.data import ham10000, pipeline, prepare, sources
from ham_synth.evaluators import convert_inception, fid, inception
from ham_synth.tasks import base, sampling

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "evaluators"))
import torch_reference as tr  # noqa: E402  (stubs torchvision's CUDA-only modules first)

torch = tr.torch

CASES = ("ddpm", "vit", "inception", "sampler", "pipeline", "ddpm_levers", "config")
# ddpm_levers (three more compiles of the DDPM step on a GPU) and config run when asked.
DEFAULT_CASES = ("ddpm", "vit", "inception", "sampler", "pipeline")

# Shapes per preset. ddpm: the DDPM UNet (model fields of configs/ddpm.py); ddpm_levers: its
# train step also timed, in the first of --dtypes and after every other case, at `more_batches`
# and with k `steps_per_call` (a lax.scan over k batches); vit: the ViT (fields of
# configs/vit.py); inception: batch and input sizes; sampler: (sampler, steps) pairs and batch;
# pipeline: generated 600x450 JPEGs read at each size as the named recipe stores and augments
# them.
PRESETS = {
    "tiny": dict(
        ddpm=dict(image_size=8, channels=16, channel_mults=(1, 2), num_res_blocks=1,
                  attention_resolutions=(), num_heads=1, batch=4),
        ddpm_levers=dict(more_batches=(), steps_per_call=(2,)),
        vit=dict(image_size=16, patch_size=4, width=32, depth=2, num_heads=2, mlp_dim=64, batch=4),
        inception=dict(batch=2, sizes=(32,)),
        sampler=dict(batch=4, runs=(("ddim", 2), ("dpmpp_2m", 2))),
        pipeline=dict(num_jpegs=35, batch=4, batches=2, sizes={64: "ddpm.py:ham64"}),
        warmup=1, steps=2, matmul=256,
    ),
    "cpu": dict(
        # The issue's figure: 4.3M parameters, 32x32, batch 32.
        ddpm=dict(image_size=32, channels=64, channel_mults=(1, 2), num_res_blocks=2,
                  attention_resolutions=(16,), num_heads=1, batch=32),
        # A scan of 4 steps ran > 10 min here: XLA:CPU runs the step far slower in a loop.
        ddpm_levers=dict(more_batches=(64,), steps_per_call=()),
        vit=dict(image_size=64, patch_size=8, width=192, depth=12, num_heads=3, mlp_dim=768,
                 batch=32),  # ViT-Ti/8 at 64x64: 64 patches.
        inception=dict(batch=16, sizes=(64, 299)),
        sampler=dict(batch=16, runs=(("ddim", 50), ("dpmpp_2m", 25))),
        pipeline=dict(num_jpegs=200, batch=32, batches=16,
                      sizes={64: "ddpm.py:ham64", 224: "vit.py:ham_augreg"}),
        warmup=10, steps=3, matmul=2048,
    ),
    "gpu": dict(
        # configs/ddpm.py:ham64 (38M parameters) and ViT-S/16 at 224x224.
        ddpm=dict(image_size=64, channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                  attention_resolutions=(16,), num_heads=4, batch=64),
        ddpm_levers=dict(more_batches=(128, 256), steps_per_call=(4,)),
        vit=dict(image_size=224, patch_size=16, width=384, depth=12, num_heads=6, mlp_dim=1536,
                 batch=128),
        inception=dict(batch=200, sizes=(64, 299)),
        sampler=dict(batch=256, runs=(("ddim", 50), ("dpmpp_2m", 25))),
        pipeline=dict(num_jpegs=400, batch=64, batches=24,
                      sizes={64: "ddpm.py:ham64", 224: "vit.py:ham_augreg"}),
        warmup=5, steps=5, matmul=8192,
    ),
}  # fmt: skip

_PRESET = flags.DEFINE_enum("preset", "cpu", list(PRESETS), "Shapes and step counts.")
_CASES = flags.DEFINE_list("cases", list(DEFAULT_CASES), f"Which of {CASES} to run.")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The `config` case's config, e.g. configs/vae.py:quickstart.", lock_config=True
)
_DTYPES = flags.DEFINE_list(
    "dtypes", ["float32"], "Compute dtypes of the train steps and samplers: float32,bfloat16."
)
_REPEATS = flags.DEFINE_integer("repeats", 3, "Interleaved rounds per measurement.")
_STEPS = flags.DEFINE_integer("steps", 0, "Timed calls per round; 0: the preset's.")
_WARMUP = flags.DEFINE_integer("warmup", -1, "Untimed calls after compiling; -1: the preset's.")
_FULL_10K = flags.DEFINE_bool(
    "full_10k",
    False,
    "Also generate 10k DDIM-50 samples and their FID (Inception, random weights).",
)
_OUT_DIR = flags.DEFINE_string(
    "out_dir", "", "Where results.{md,json} go; '': runs/benchmark/PRESET."
)


# --- The harness ---


@dataclasses.dataclass
class Runner:
    """One side of a measurement: `prepare()` compiles (or makes the first eager call) and
    returns its facts; `call()` runs one step and blocks until it is done."""

    label: str
    prepare: Callable[[], dict]
    call: Callable[[], None]


@dataclasses.dataclass
class Row:
    """One line of the table: a case on one side, in one dtype."""

    case: str
    side: str
    images_per_call: int
    params: int | None = None
    compile_s: float | None = None
    step_ms: float | None = None
    spread_ms: tuple[float, float] | None = None
    flops: float | None = None
    memory_bytes: int | None = None
    memory_source: str = ""
    dtype: str = "float32"
    note: str = ""
    mfu: float | None = None
    vs_peer: float | None = None
    image_size: int | None = None

    @property
    def images_per_s(self) -> float | None:
        return self.images_per_call / (self.step_ms / 1e3) if self.step_ms else None


def time_calls(call: Callable[[], None], n: int) -> list[float]:
    """Seconds of each of `n` calls of `call`, which blocks on its result."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(runners: list[Runner], rows: list[Row], warmup: int, steps: int, repeats: int):
    """Prepares every runner, warms each up, then times `repeats` rounds of `steps` calls with the
    runners interleaved; fills each row's compile and step figures."""
    for runner, row in zip(runners, rows, strict=True):
        start = time.perf_counter()
        facts = runner.prepare()
        row.compile_s = facts.pop("compile_s", time.perf_counter() - start)
        add_note(row, facts.pop("note", ""))
        for key, value in facts.items():
            setattr(row, key, value)
        time_calls(runner.call, warmup)
    medians = [[] for _ in runners]
    for _ in range(repeats):
        for i, runner in enumerate(runners):
            medians[i].append(statistics.median(time_calls(runner.call, steps)) * 1e3)
    for row, ms in zip(rows, medians, strict=True):
        row.step_ms, row.spread_ms = statistics.median(ms), (min(ms), max(ms))


def add_note(row: Row, note: str) -> None:
    """Appends `note` to the row's note column, '; '-separated."""
    row.note = "; ".join(filter(None, [row.note, note]))


# The prefix of the custom calls that jax.nn.dot_product_attention(implementation="cudnn")
# lowers to (__cudnn$fmhaSoftmax, ...Backward, ...).
CUDNN_ATTENTION = "__cudnn$fmha"


def attention_note(lowered_text: str) -> str:
    """The note for a program whose attention runs as cuDNN's fused kernel, else ''. XLA's cost
    analysis gives such custom calls no FLOPs, so the row's GFLOP/step and MFU leave them out."""
    if CUDNN_ATTENTION not in lowered_text:
        return ""
    return "cuDNN fused attention (its FLOPs are not in GFLOP/step or MFU)"


def jax_runner(label: str, jitted, args: tuple, carry_state: bool = False) -> Runner:
    """A jitted function called on `args`; with `carry_state` its first output (a donated state)
    replaces the first argument after each call, as in training."""
    box = {"args": args}

    def prepare():
        start = time.perf_counter()
        lowered = jitted.lower(*box["args"])
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
        box["compiled"] = compiled
        # The lowered program's cost: the compiled one's on GPUs leaves out the convolutions and
        # matmuls that become cuDNN / cuBLAS custom calls.
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        memory = compiled.memory_analysis()
        memory_bytes = None
        if memory is not None:
            memory_bytes = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes
            )
        return dict(
            compile_s=compile_s,
            flops=float(cost.get("flops", 0.0)) or None if cost else None,
            memory_bytes=memory_bytes,
            memory_source="XLA memory_analysis" if memory_bytes is not None else "",
            note=attention_note(lowered.as_text()),
        )

    def call():
        out = box["compiled"](*box["args"])
        jax.block_until_ready(out)
        if carry_state:
            box["args"] = (out[0], *box["args"][1:])

    return Runner(label, prepare, call)


def torch_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_runner(label: str, step: Callable[[], None]) -> Runner:
    """An eager PyTorch step; its 'compile' time is the first call's."""
    device = torch_device()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def prepare():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        sync()
        facts = dict(compile_s=time.perf_counter() - start)
        if device.type == "cuda":
            facts.update(
                memory_bytes=torch.cuda.max_memory_allocated(),
                memory_source="torch.cuda.max_memory_allocated",
            )
        return facts

    def call():
        step()
        sync()

    return Runner(label, prepare, call)


def peak_matmul_flops(dtype: str, n: int) -> float:
    """FLOP/s of an n x n x n matmul in `dtype` on the default device, the best of 10 calls after
    3 warm-ups (GPU clocks ramp up under load): the MFU denominator."""
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.dtype(dtype))
    matmul = jax.jit(lambda a: a @ a).lower(x).compile()
    call = lambda: jax.block_until_ready(matmul(x))  # noqa: E731
    time_calls(call, 3)
    return 2 * n**3 / min(time_calls(call, 10))


# --- The cases ---


def one_device_task(config):
    """(task, step-0 state, one-device mesh) for `config`, with random weights."""
    mesh = parallel.make_mesh(1)
    task = tasks.get_task(config.task)(config)
    state = jax.jit(task.init, out_shardings=parallel.replicated(mesh))(
        jax.random.key(0), workdir.example_batch(config)
    )
    return task, state, mesh


def random_inception(device):
    """(flax variables, pytorch-fid's torch model on `device`) with the same random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        pth = pathlib.Path(tmp) / convert_inception.TORCH_WEIGHTS_FILENAME
        tr.write_random_fid_weights(pth, seed=0)
        torch_model = tr.load_fid_inception(pth).to(device)
        variables = convert_inception.torch_to_flax(convert_inception.read_torch_weights(pth))
    return variables, torch_model


def jax_train_runner(config, batch: dict, label: str, steps_per_call: int = 1):
    """(runner, parameter count): the trainer's own jitted step (task, mesh, donation) on one
    device and a fixed batch; with `steps_per_call` k > 1, k steps in one call, a lax.scan over
    k copies of the batch (what a `train.steps_per_call` would do)."""
    task, state, mesh = one_device_task(config)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    step = train.make_train_step(task, mesh)
    if steps_per_call == 1:
        args = (state, parallel.to_global_batch(batch, mesh), jax.random.key(1))
        return jax_runner(label, step, args, carry_state=True), int(num_params)

    def k_steps(state, batches, rng):
        rngs = jax.random.split(rng, steps_per_call)
        return jax.lax.scan(lambda s, xs: step(s, *xs), state, (batches, rngs))

    stacked = jax.device_put({k: np.stack([v] * steps_per_call) for k, v in batch.items()})
    jitted = jax.jit(k_steps, donate_argnums=0)
    return jax_runner(label, jitted, (state, stacked, jax.random.key(1)), True), int(num_params)


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32),
        "label": rng.integers(0, num_classes, batch).astype(np.int32),
        "index": np.arange(batch, dtype=np.int32),
        "synthetic": np.zeros(batch, np.bool_),
    }


def bench_config(file: str, shape: dict, dtype: str, **fields):
    """configs/`file` on one device for 7 classes, with the preset `shape` (image_size, batch and
    model fields) and compute dtype, plus `fields`."""
    values = {f"model.{k}": v for k, v in shape.items() if k not in ("image_size", "batch")}
    values.update(
        {
            "data.image_size": shape["image_size"],
            "data.num_classes": 7,
            "train.batch_size": shape["batch"],
            "train.num_devices": 1,
            "train.compute_dtype": dtype,
            **fields,
        }
    )
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / file
    return config_lib.with_values(config_lib.load_config(str(path)), values)


def ddpm_config(shape: dict, dtype: str):
    """The DDPM at `shape` with Ho et al.'s linear schedule and eps-prediction."""
    return bench_config(
        "ddpm.py",
        shape,
        dtype,
        **{
            "sample.compute_dtype": dtype,
            "diffusion.schedule": "linear",
            "diffusion.prediction": "eps",
        },
    )


def diffusers_unet(shape: dict, num_classes: int):
    """diffusers' UNet2DModel with the levels, widths, res blocks and attention resolutions of
    our UNet; scale-shift time conditioning (ADM's AdaGN, as ours) and GroupNorm(8)."""
    import diffusers  # noqa: PLC0415  (test extra)

    size, mults = shape["image_size"], shape["channel_mults"]
    attention = [size // 2**i in shape["attention_resolutions"] for i in range(len(mults))]
    widths = [shape["channels"] * m for m in mults]
    # Our attention has num_heads heads at every level; diffusers fixes the head width instead.
    # The middle block (the last width) always has attention.
    attention_width = max(
        (w for w, a in zip(widths, attention, strict=True) if a), default=widths[-1]
    )
    return diffusers.UNet2DModel(
        sample_size=size,
        block_out_channels=widths,
        layers_per_block=shape["num_res_blocks"],
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        attention_head_dim=attention_width // shape["num_heads"],
        norm_num_groups=min(8, shape["channels"]),
        resnet_time_scale_shift="scale_shift",
        num_class_embeds=num_classes + 1,  # + the null class of classifier-free guidance
    )


def torch_train_step(model, loss_fn, inputs, dtype: str) -> Callable[[], None]:
    """AdamW on `loss_fn(model, *inputs)`, under bfloat16 autocast when asked."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(torch_device().type, torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model, *inputs)
        loss.backward()
        optimizer.step()

    return step


def case_ddpm(preset: dict, dtype: str) -> list[Row]:
    """The ham64 DDPM's train step against diffusers' UNet2DModel."""
    shape = preset["ddpm"]
    config = ddpm_config(shape, dtype)
    batch = random_batch(shape["batch"], shape["image_size"], 7)
    jax_side, jax_params = jax_train_runner(config, batch, "JAX")

    device = torch_device()
    model = diffusers_unet(shape, 7).to(device)
    betas = torch.linspace(1e-4, 0.02, 1000, device=device)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    x0 = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).to(device)
    labels = torch.from_numpy(batch["label"]).long().to(device)

    def loss_fn(model, x0, labels):
        t = torch.randint(0, 1000, (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(x_t, t, class_labels=labels).sample
        return torch.nn.functional.mse_loss(pred.float(), noise)

    torch_side = torch_runner(
        "diffusers UNet2DModel", torch_train_step(model, loss_fn, (x0, labels), dtype)
    )
    torch_params = sum(p.numel() for p in model.parameters())
    images, size = shape["batch"], shape["image_size"]
    rows = [
        Row("ddpm train step", "JAX", images, jax_params, dtype=dtype, image_size=size),
        Row("ddpm train step", "PyTorch (diffusers)", images, torch_params, dtype=dtype,
            image_size=size),
    ]  # fmt: skip
    measure([jax_side, torch_side], rows, *_timing(preset))
    return rows


def case_ddpm_levers(preset: dict, dtype: str) -> list[Row]:
    """The JAX DDPM step at the larger `more_batches` and with `steps_per_call` steps per call
    (at the preset's batch): its own rows, each with its own MFU."""
    shape, levers = preset["ddpm"], preset["ddpm_levers"]
    variants = [(b, 1) for b in levers["more_batches"]]
    variants += [(shape["batch"], k) for k in levers["steps_per_call"]]
    rows = []
    for batch_size, k in variants:
        config = ddpm_config({**shape, "batch": batch_size}, dtype)
        batch = random_batch(batch_size, shape["image_size"], 7)
        runner, params = jax_train_runner(config, batch, "JAX", steps_per_call=k)
        case = f"ddpm train step, batch {batch_size}" + (f", {k} steps per call" if k > 1 else "")
        row = Row(case, "JAX", batch_size * k, params, dtype=dtype)
        warmup, steps, repeats = _timing(preset)
        measure([runner], [row], max(1, warmup // k), max(1, steps // k), repeats)
        # XLA's cost analysis counts a loop body once: the scan runs it k times.
        row.flops = row.flops and row.flops * k
        rows.append(row)
    return rows


def case_vit(preset: dict, dtype: str) -> list[Row]:
    import timm  # noqa: PLC0415  (test extra)

    shape = preset["vit"]
    size, batch_size = shape["image_size"], shape["batch"]
    config = bench_config("vit.py", shape, dtype)
    batch = random_batch(batch_size, size, 7)
    jax_side, jax_params = jax_train_runner(config, batch, "JAX")

    device = torch_device()
    model = timm.models.VisionTransformer(
        img_size=size,
        patch_size=shape["patch_size"],
        num_classes=7,
        embed_dim=shape["width"],
        depth=shape["depth"],
        num_heads=shape["num_heads"],
        mlp_ratio=shape["mlp_dim"] / shape["width"],
        class_token=config.model.pool == "token",
        global_pool="token" if config.model.pool == "token" else "avg",
    ).to(device)
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).to(device)
    labels = torch.from_numpy(batch["label"]).long().to(device)

    def loss_fn(model, images, labels):
        return torch.nn.functional.cross_entropy(
            model(images).float(), labels, label_smoothing=config.loss.label_smoothing
        )

    torch_side = torch_runner("timm", torch_train_step(model, loss_fn, (images, labels), dtype))
    rows = [
        Row("vit train step", "JAX", batch_size, jax_params, dtype=dtype, image_size=size),
        Row("vit train step", "PyTorch (timm)", batch_size,
            sum(p.numel() for p in model.parameters()), dtype=dtype, image_size=size),
    ]  # fmt: skip
    measure([jax_side, torch_side], rows, *_timing(preset))
    return rows


def case_inception(preset: dict, dtype: str) -> list[Row]:
    """Pool features of uint8 images, resized to 299 inside each network, same random weights."""
    shape = preset["inception"]
    variables, torch_model = random_inception(torch_device())
    mesh = parallel.make_mesh(1)
    num_params = sum(v.size for v in jax.tree.leaves(variables["params"]))
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.dtype(dtype)), variables)
    apply = jax.jit(inception.InceptionV3(dtype=jnp.dtype(dtype)).apply)
    rows = []
    for size in shape["sizes"]:
        images = np.random.default_rng(size).integers(
            0, 256, (shape["batch"], size, size, 3), dtype=np.uint8
        )
        on_mesh = parallel.to_global_batch(images, mesh)
        jax_side = jax_runner("JAX", apply, (variables, on_mesh))
        torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch_device())
        autocast = torch.autocast(torch_device().type, torch.bfloat16, enabled=dtype == "bfloat16")

        def torch_call(torch_images=torch_images, autocast=autocast):
            with torch.no_grad(), autocast:
                torch_model(torch_images.float() / 255.0)

        torch_side = torch_runner("pytorch-fid", torch_call)
        pair = [
            Row(f"inception features {size}px", "JAX", shape["batch"], num_params, dtype=dtype),
            Row(f"inception features {size}px", "pytorch-fid", shape["batch"],
                sum(p.numel() for p in torch_model.parameters()), dtype=dtype),
        ]  # fmt: skip
        measure([jax_side, torch_side], pair, *_timing(preset))
        rows += pair
    return rows


def case_sampler(preset: dict, dtype: str) -> list[Row]:
    """Images/s of the DDPM's sample function (guidance as configs/ddpm.py: two UNet passes per
    step), and the time to 10k samples extrapolated from it."""
    shape, sampling = preset["ddpm"], preset["sampler"]
    config = ddpm_config(shape, dtype)
    task, state, mesh = one_device_task(config)
    labels = parallel.to_global_batch(np.arange(sampling["batch"], dtype=np.int32) % 7, mesh)
    variables = jax.device_put(state_lib.eval_variables(state), parallel.replicated(mesh))
    rows = []
    for sampler, steps in sampling["runs"]:
        fn = functools.partial(task.predict_fns[base.SAMPLE], sampler=sampler, steps=steps)
        runner = jax_runner("JAX", jax.jit(fn), (variables, labels, jax.random.key(0)))
        row = Row(f"sample {sampler}-{steps}", "JAX", sampling["batch"], dtype=dtype)
        measure([runner], [row], warmup=1, steps=1, repeats=max(1, _REPEATS.value - 1))
        # XLA's cost analysis counts a loop body once: the sampler's scan runs it `steps` times.
        row.flops = row.flops and row.flops * steps
        minutes = 10_000 / row.images_per_s / 60
        add_note(row, f"guidance {config.sample.guidance}")
        add_note(row, f"10k samples in {minutes:.1f} min (extrapolated)")
        rows.append(row)
    return rows


def case_pipeline(preset: dict, step_rows: list[Row]) -> list[Row]:
    """The grain training pipeline over a HAM10000-like download of 600x450 JPEGs, read two ways:
    the folder source (decoded and resized on every access) and the prepared source (`ham-synth
    prepare`'s ArrayRecord), at each size with its recipe's augmentation, with 0, 1 and all spare
    cores' worker processes; against the consumption of the JAX train step at that size."""
    spec = preset["pipeline"]
    workers = sorted({0, 1, max(1, (os.cpu_count() or 2) - 1)})
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        download = pathlib.Path(tmp) / "download"
        write_download(download, spec["num_jpegs"])
        for size, recipe in spec["sizes"].items():
            data = config_lib.load_config(str(CONFIGS / recipe)).data
            consumers = [r.images_per_s for r in step_rows if r.side == "JAX"
                         and r.image_size == size and r.case.endswith("train step")]  # fmt: skip
            for name in ("folder", "ham10000"):
                source = sources.get_source(pipeline_data(data, name, download, pathlib.Path(tmp)))
                for worker_count in workers:
                    seconds = batch_seconds(source, data.augment, spec, worker_count)
                    row = Row(
                        f"input pipeline {size}px",
                        f"grain ({SOURCE_LABELS[name]}), {worker_count} workers",
                        spec["batch"],
                        step_ms=seconds * 1e3,
                        note=f"{recipe}: stored at {data.image_size}px, "
                        f"{data.augment or 'no augmentation'}",
                    )
                    if consumers:
                        row.vs_peer = row.images_per_s / max(consumers)
                        add_note(row, feeding_note(max(consumers), size))
                    rows.append(row)
    return rows


def feeding_note(consumed: float, size: int) -> str:
    """What the ratio is against, and the rate a GPU host would need (3x the step's)."""
    need = 3 * consumed
    return (
        f"ratio vs the fastest JAX train step at {size}px; 3x it is {need:,.0f} images/s, "
        f"{need / 15:,.0f} per worker on a 16-core host"
    )


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SOURCE_LABELS = {"folder": "folder JPEGs", "ham10000": "prepared ArrayRecord"}


def pipeline_data(recipe_data, name: str, download: pathlib.Path, tmp: pathlib.Path):
    """`recipe_data` (a config's data block) read from the `folder` source over `download`'s class
    folders, or from the `ham10000` source prepared from it here, all splits."""
    data = config_lib.get_base_config().data
    data.update(dict(name=name, image_size=recipe_data.image_size, split="all", num_classes=7))
    if name == "folder":
        data.path = str(download)
    else:
        data.data_dir = str(tmp / "prepared")
        prepare.prepare_ham10000(
            manual_dir=str(download), data_dir=data.data_dir, image_size=data.image_size
        )
    return data


def batch_seconds(source, augment: str, spec: dict, worker_count: int) -> float:
    """Seconds per batch of the training stream over `source`, after a warm-up of as many batches
    as the workers hold ahead (their start-up is not the steady rate)."""
    dataset = pipeline.make_dataset(
        source, batch_size=spec["batch"], seed=0, shard_index=0, shard_count=1, augment=augment,
        worker_count=worker_count,
    )  # fmt: skip
    batches = iter(dataset)
    for _ in range(1 + 2 * worker_count):
        next(batches)
    start = time.perf_counter()
    for _ in range(spec["batches"]):
        next(batches)
    return (time.perf_counter() - start) / spec["batches"]


def write_download(root: pathlib.Path, count: int, seed: int = 0) -> None:
    """A HAM10000-like download: `count` 600x450 JPEGs of smooth random colour plus grain noise
    (smooth like skin, so they decode at a realistic speed) in class folders, which the folder
    source reads, and a metadata CSV naming each as its own lesion, which `prepare` reads."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        dx = ham10000.CLASS_NAMES[i % len(ham10000.CLASS_NAMES)]
        (root / dx).mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((600, 450), Image.BICUBIC), np.int16)
        noisy = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(root / dx / f"ISIC_{i:07d}.jpg", quality=90)
        rows.append(dict(lesion_id=f"HAM_{i:07d}", image_id=f"ISIC_{i:07d}", dx=dx,
                         dx_type="histo", age="50.0", sex="male", localization="back"))  # fmt: skip
    with (root / ham10000.METADATA_FILE).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ham10000.COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def case_config(preset: dict) -> list[Row]:
    """One config's train step as the trainer builds it: its data (one real batch), mesh, task
    and initial state."""
    config = _CONFIG.value
    mesh = parallel.make_mesh(config.train.num_devices)
    parallel.check_batch_size(config.train.batch_size, mesh)
    built = workdir.build(config, mesh)
    batch = parallel.to_global_batch(next(iter(built.dataset)), mesh)
    state = workdir.initial_state(built, jax.random.key(built.config.seed), mesh)
    step = train.make_train_step(built.task, mesh)
    runner = jax_runner("JAX", step, (state, batch, jax.random.key(1)), carry_state=True)
    name = config_flags.get_config_filename(flags.FLAGS["config"])
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    row = Row(
        f"{name} train step at {config.data.image_size}px",
        "JAX",
        config.train.batch_size,
        int(sum(x.size for x in jax.tree.leaves(state.params))),
        dtype=config.train.compute_dtype,
    )
    measure([runner], [row], *_timing(preset))
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    add_note(row, f"{mesh.size} device(s); process max RSS {rss_gib:.1f} GiB")
    add_note(row, f"overrides {overrides}")
    return [row]


def full_10k(preset: dict, dtype: str) -> dict:
    """Wall time of 10,000 DDIM-50 samples from the ddpm shape (random weights) and their FID
    against 10,000 random images, Inception with random weights: the end-to-end evaluation cost."""
    task, state, mesh = one_device_task(ddpm_config(preset["ddpm"], dtype))
    labels = np.arange(10_000, dtype=np.int32) % 7
    start = time.perf_counter()
    images = sampling.generate_all(
        functools.partial(task.predict_fns[base.SAMPLE], sampler="ddim", steps=50),
        state, labels, jax.random.key(0), batch_size=preset["sampler"]["batch"], mesh=mesh,
    )  # fmt: skip
    sample_s = time.perf_counter() - start
    variables, _ = random_inception("cpu")
    feature_fn = inception.make_feature_fn(variables, mesh, jnp.dtype(dtype))
    real = np.random.default_rng(0).integers(0, 256, (10_000, 64, 64, 3), dtype=np.uint8)
    start = time.perf_counter()
    batch = preset["inception"]["batch"]

    def features(x):
        return inception.extract_features(feature_fn, lambda i: x[i], len(x), batch, mesh)

    fake_features = features(np.asarray((images + 1) * 127.5, np.uint8))
    real_features = features(real)
    metrics = fid.compute_metrics(real_features, fake_features, seed=0)
    fid_s = time.perf_counter() - start
    return dict(
        samples=10_000,
        batch=preset["sampler"]["batch"],
        sample_s=sample_s,
        fid_s=fid_s,
        fid=metrics["fid"],
        dtype=dtype,
    )


def _timing(preset: dict) -> tuple[int, int, int]:
    warmup = preset["warmup"] if _WARMUP.value < 0 else _WARMUP.value
    return warmup, _STEPS.value or preset["steps"], _REPEATS.value


# --- The table ---


def finish(rows: list[Row], peaks: dict[str, float]) -> None:
    """MFU from the JAX row's FLOPs and the dtype's matmul peak; JAX's speed over its peer's."""
    for case_rows in _by_case(rows).values():
        jax_row = next((r for r in case_rows if r.side == "JAX"), None)
        for row in case_rows:
            flops = jax_row.flops if jax_row else None
            if flops and row.step_ms and row.dtype in peaks:
                row.mfu = flops / (row.step_ms / 1e3) / peaks[row.dtype]
            if jax_row and row is not jax_row and row.step_ms and jax_row.step_ms:
                jax_row.vs_peer = row.step_ms / jax_row.step_ms


def _by_case(rows: list[Row]) -> dict:
    groups = {}
    for row in rows:
        groups.setdefault((row.case, row.dtype), []).append(row)
    return groups


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    lines = [
        "| case | side | dtype | params | batch | compile / first call (s) | step (ms), median "
        "[min-max] | images/s | peak memory (MiB) | GFLOP/step | MFU | JAX vs peer | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f" [{r.spread_ms[0]:.1f}-{r.spread_ms[1]:.1f}]" if r.spread_ms else ""
        lines.append(
            f"| {r.case} | {r.side} | {r.dtype} | {_fmt(r.params, ',')} | {r.images_per_call} | "
            f"{_fmt(r.compile_s, '.2f')} | {_fmt(r.step_ms, '.1f')}{spread} | "
            f"{_fmt(r.images_per_s, ',.1f')} | "
            f"{_fmt(r.memory_bytes and r.memory_bytes / 2**20, ',.0f')} | "
            f"{_fmt(r.flops and r.flops / 1e9, ',.2f')} | {_fmt(r.mfu, '.1%')} | "
            f"{_fmt(r.vs_peer, '.2f', '')}{'x' if r.vs_peer else ''} | {r.note} |"
        )
    return "\n".join(lines)


def environment() -> dict:
    device = jax.devices()[0]
    versions = {}
    for name in ("jax", "jaxlib", "flax", "torch", "diffusers", "timm", "pytorch-fid"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "torch_device": str(torch_device())
        + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""),
        "torch_threads": torch.get_num_threads(),
        "host": f"{platform.processor() or platform.machine()}, {platform.platform()}",
        "versions": versions,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # ham_synth's XLA:CPU default included.
    }


def write_results(out_dir: pathlib.Path, env: dict, peaks: dict, rows: list[Row], extra: dict):
    """results.md (the table, with the device and versions) and results.json; rewritten after
    every case, so a run cut short keeps what it measured."""
    finish(rows, peaks)
    header = (
        f"Device: {env['device']} ({env['backend']}); PyTorch on {env['torch_device']}, "
        f"{env['torch_threads']} threads. Versions: "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
        + ". Matmul peak (the MFU denominator): "
        + ", ".join(f"{d} {p / 1e12:.2f} TFLOP/s" for d, p in peaks.items())
        + f". XLA_FLAGS: {env['xla_flags'] or '(none)'}"
        + f". Preset {_PRESET.value}, {_REPEATS.value} interleaved rounds, {env['date']}.\n"
    )
    if "full_10k" in extra:
        e = extra["full_10k"]
        header += (
            f"\n10k DDIM-50 samples ({e['dtype']}, batch {e['batch']}): {e['sample_s']:.1f} s; "
            f"their FID against 10k random images: {e['fid_s']:.1f} s (measured).\n"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    text = header + "\n" + table(rows) + "\n"
    fileio.write_text(out_dir / "results.md", text)  # Atomic: a run cut off keeps the last.
    results = {
        "environment": env,
        "preset": _PRESET.value,
        "matmul_peak_flops": peaks,
        "rows": [dataclasses.asdict(r) | {"images_per_s": r.images_per_s} for r in rows],
        **extra,
    }
    fileio.write_json(out_dir / "results.json", results)
    return text


def main(argv) -> None:
    xla_cpu.apply()  # Before the first computation starts JAX's backend.
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(_CASES.value) - set(CASES))
    if unknown:
        raise app.UsageError(f"--cases: unknown {unknown}; choose from {CASES}.")
    if "config" in _CASES.value and _CONFIG.value is None:
        raise app.UsageError("--cases=config needs --config, e.g. configs/vae.py:quickstart.")
    for dtype in _DTYPES.value:
        config_lib.compute_dtype(dtype, "--dtypes")
    preset = PRESETS[_PRESET.value]
    out_dir = pathlib.Path(_OUT_DIR.value or f"runs/benchmark/{_PRESET.value}")
    # TF32 for float32 matmuls and convs, as XLA uses on GPUs by default; cuDNN picks its
    # convolution algorithms by timing them (in the warm-up calls), as XLA's autotuner does.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    env = environment()
    peaks = {d: peak_matmul_flops(d, preset["matmul"]) for d in _DTYPES.value}
    print(f"{env['device']} ({env['backend']}); matmul peak " + ", ".join(
        f"{d} {p / 1e12:.2f} TFLOP/s" for d, p in peaks.items()), flush=True)  # fmt: skip
    cases = {"ddpm": case_ddpm, "vit": case_vit, "inception": case_inception,
             "sampler": case_sampler}  # fmt: skip
    rows, extra = [], {}

    def run_case(case: str, dtype: str, fn) -> None:
        """Runs one case, prints its rows and rewrites the results; a failure becomes a row."""
        start = time.perf_counter()
        try:
            new = fn()
        except Exception as error:  # noqa: BLE001  (one failing case must not lose the rest)
            traceback.print_exc()
            new = [Row(case, "failed", 0, dtype=dtype, note=f"{type(error).__name__}: "
                       f"{str(error).splitlines()[0] if str(error) else ''}")]  # fmt: skip
        rows.extend(new)
        print(f"[{dtype}] {case}: {time.perf_counter() - start:.0f} s", flush=True)
        finish(rows, peaks)
        print(table(new), flush=True)
        write_results(out_dir, env, peaks, rows, extra)

    for dtype in _DTYPES.value:
        for case in [c for c in _CASES.value if c in cases]:
            run_case(case, dtype, functools.partial(cases[case], preset, dtype))
    if "config" in _CASES.value:
        print("config ...", flush=True)
        rows += case_config(preset)
        write_results(out_dir, env, peaks, rows, extra)
    if "pipeline" in _CASES.value:
        run_case("pipeline", "float32", lambda: case_pipeline(preset, rows))
    if "ddpm_levers" in _CASES.value:  # Last: each lever is a compile of its own (tens of s).
        dtype = _DTYPES.value[0]
        run_case("ddpm_levers", dtype, functools.partial(case_ddpm_levers, preset, dtype))
    if _FULL_10K.value:
        print("10k DDIM-50 samples + FID ...", flush=True)
        extra["full_10k"] = full_10k(preset, _DTYPES.value[-1])
    print(write_results(out_dir, env, peaks, rows, extra))
    print(f"Wrote {out_dir}/results.md and results.json")


if __name__ == "__main__":
    app.run(main)
