"""Times the grain training pipeline in-process (images/s), plain and with augmentation, to check
that the CPU data path keeps ahead of the train step.

    python tools/bench_pipeline.py --out=bench_pipeline.json
    python tools/bench_pipeline.py --data_dir=D --step_json=step_64.json,step_128.json

Sources: `folder` over generated 600x450 JPEGs (HAM10000's original size, decoded and resized on
every access), the embedded digits, and a prepared ham10000 when --data_dir is given. With
--step_json (from tools/bench_step.py) the table ends with the steps' consumption rates.
"""

import datetime
import itertools
import json
import os
import pathlib
import platform
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from ham_synth import config_lib
from ham_synth.data import ham10000, pipeline, sources

_AUGMENT = flags.DEFINE_string(
    "augment", "flip_lr|rotate(15)|zoom(0.9,1.1)", "Op string timed against no augmentation."
)
_SIZES = flags.DEFINE_list("sizes", ["64", "128"], "Image sizes to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per batch.")
_BATCHES = flags.DEFINE_integer("batches", 24, "Timed batches per case, from the iterator's start.")
_NUM_JPEGS = flags.DEFINE_integer("num_jpegs", 200, "Generated JPEGs for the folder source.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "A prepared ham10000 (`ham-synth prepare`).")
_STEP_JSON = flags.DEFINE_list(
    "step_json", [], "tools/bench_step.py JSON files (comma separated), to compare with."
)
_OUT = flags.DEFINE_string("out", "bench_pipeline.json", "Where the JSON results go.")


def write_jpegs(root: pathlib.Path, count: int, seed: int = 0) -> None:
    """`count` 600x450 JPEGs of smooth random colour fields plus grain noise, spread over
    HAM10000's class folders; smooth like skin, so they decode at a realistic speed."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ham10000.CLASS_NAMES[i % len(ham10000.CLASS_NAMES)]
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((600, 450), Image.BICUBIC), np.int16)
        noisy = np.clip(smooth + rng.integers(-8, 9, smooth.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img_{i:04d}.jpg", quality=90)


def data_config(name: str, image_size: int, **fields):
    """config.data for one source, from the shared defaults."""
    data = config_lib.get_base_config().data
    data.update(dict(name=name, image_size=image_size, split="all", **fields))
    return data


def images_per_sec(source, augment: str, batch_size: int, num_batches: int) -> float:
    """Images/s of the training pipeline over `source`, in this process, from `iter()` to the
    last of `num_batches` batches.

    grain's in-process iterator prefetches ~500 records on threads, so timing only batches after
    a warm-up would partly time a full buffer; keep `num_batches * batch_size` well above 500.
    """
    dataset = pipeline.make_dataset(
        source, batch_size=batch_size, seed=0, shard_index=0, shard_count=1, augment=augment
    )
    start = time.perf_counter()
    for _ in itertools.islice(iter(dataset), num_batches):
        pass
    return batch_size * num_batches / (time.perf_counter() - start)


def step_rate(path: str) -> dict:
    """A train step's consumption rate, from a bench_step.py JSON."""
    results = json.loads(pathlib.Path(path).read_text())
    keys = ("config", "overrides", "image_size", "global_batch", "images_per_sec", "device_kind")
    return {k: results.get(k) for k in keys}


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    sizes = [int(s) for s in _SIZES.value]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        write_jpegs(pathlib.Path(tmp), _NUM_JPEGS.value)
        for size in sizes:
            cases = {
                "folder (600x450 JPEG)": data_config("folder", size, path=tmp, num_classes=7),
                "digits (in memory)": data_config("digits", size),
            }
            if _DATA_DIR.value:
                cases["ham10000 (prepared)"] = data_config(
                    "ham10000", size, data_dir=_DATA_DIR.value, num_classes=7
                )
            for name, data in cases.items():
                source = sources.get_source(data)
                for augment in ("", _AUGMENT.value):
                    rate = images_per_sec(source, augment, _BATCH_SIZE.value, _BATCHES.value)
                    results.append(
                        {
                            "source": name,
                            "image_size": size,
                            "augment": augment,
                            "images_per_sec": rate,
                        }
                    )
                    print(
                        f"{name:24s} {size:4d}px  {augment or '(none)':34s} {rate:8,.0f} images/s"
                    )
    steps = [step_rate(path) for path in _STEP_JSON.value]
    for step in steps:
        print(
            f"train step ({step['config']}, batch {step['global_batch']} at "
            f"{step['image_size']}px on {step['device_kind']}): "
            f"{step['images_per_sec']:,.0f} images/s"
        )
    report = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "in_process": True,
        "batch_size": _BATCH_SIZE.value,
        "timed_batches": _BATCHES.value,
        "results": results,
        "train_steps": steps,
    }
    with open(_OUT.value, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
