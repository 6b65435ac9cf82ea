"""Where metrics go: metrics.jsonl, TensorBoard (tensorboardX, no TensorFlow), curves.png, and a
progress bar. Only process 0 writes files; the others only log."""

import json
import pathlib
import re
import sys

import jax
import matplotlib
from absl import logging

from ham_synth import fileio

matplotlib.use("Agg")  # Files only; never a window.
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tqdm  # noqa: E402


def _import_summary_writer():
    """tensorboardX's SummaryWriter, imported with torch hidden: tensorboardX imports torch, where
    installed, only for a type annotation, which made every run load all of PyTorch."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` now raises ImportError.
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


SummaryWriter = _import_summary_writer()
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    """Every row of `workdir/metrics.jsonl`, in order. A torn last line (the run was killed
    while appending it) is left out; a damaged line before it is an error naming it."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                logging.warning("%s: ignoring its torn last line %r.", path, line[:80])
                break
            raise ValueError(
                f"{path}, line {number}, is not JSON ({e}); fix or delete that line."
            ) from None
    return rows


def drop_rows_after(workdir: pathlib.Path, step: int) -> None:
    """Rewrites metrics.jsonl without the rows past `step` (and a torn last line): a resumed run
    redoes those steps, and no step may appear twice."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return
    rows = read_metrics(workdir)
    kept = "".join(json.dumps(row) + "\n" for row in rows if row["step"] <= step)
    if kept != path.read_text():
        logging.info("%s: dropped what was logged past step %d, which this run redoes.", path, step)
        fileio.write_text(path, kept)


def curve_keys(rows: list[dict]) -> list[str]:
    """The scalars worth a curve: logged at two steps or more, and not per class (keys with a
    class level, like `val/nv/f1`, stay in metrics.jsonl and TensorBoard)."""
    counts = {}
    for row in rows:
        for key in row:
            counts[key] = counts.get(key, 0) + 1
    return sorted(k for k, n in counts.items() if k != "step" and n > 1 and k.count("/") < 2)


def plot_curves(rows: list[dict], path: pathlib.Path, columns: int = 3) -> None:
    """One panel per curve (`curve_keys`) against step, `columns` panels a row."""
    keys = curve_keys(rows)
    if not keys:
        return
    grid_rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(
        grid_rows, columns, figsize=(4 * columns, 2.2 * grid_rows), sharex=True, squeeze=False
    )
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot(*zip(*points, strict=True))
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for i in range(len(keys), axes.size):
        axes.flat[i].set_visible(False)
        axes.flat[i - columns].tick_params(labelbottom=True)  # The panel above shows the steps.
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    # Fixed margins: tight_layout measured every tick label and took seconds per call.
    inch = 1 / fig.get_figheight()
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.5 * inch, top=1 - 0.3 * inch,
                        hspace=0.45, wspace=0.25)  # fmt: skip
    with fileio.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


# TensorBoard tags allow only these characters; tensorboardX replaces the rest with '_'.
_TAG_FORBIDDEN = re.compile(r"[^-/\w.]")


def tensorboard_tag(name: str) -> str:
    """`name` as the tag tensorboardX makes of it ('val/5:nv/f1' -> 'val/5_nv/f1'), made here
    because tensorboardX logs a line for every scalar it renames."""
    return _TAG_FORBIDDEN.sub("_", name).lstrip("/")


class MetricWriter:
    """Scalars to JSONL + TensorBoard + the log; images to TensorBoard; a tqdm bar with ETA.

    A run that resumes at `first_step` first drops what was logged past it (metrics.jsonl rows;
    TensorBoard events, through its purge step), since it logs those steps again.
    """

    def __init__(self, workdir: pathlib.Path, *, first_step: int, total_steps: int):
        self.workdir = pathlib.Path(workdir)
        self.is_writer = jax.process_index() == 0
        self._tb = None
        if self.is_writer:
            drop_rows_after(self.workdir, first_step)
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=first_step + 1)
        self._bar = tqdm.tqdm(
            initial=first_step,
            total=total_steps,
            desc="train",
            unit="step",
            disable=not self.is_writer,
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 60.0,  # Keep log files readable.
        )

    def advance(self) -> None:
        self._bar.update()

    def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        logging.info(
            "step %d | %s", step, " | ".join(f"{k} {v:.5g}" for k, v in row.items() if k != "step")
        )
        if not self.is_writer:
            return
        with open(self.workdir / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in scalars.items():
            self._tb.add_scalar(tensorboard_tag(key), value, step)
        if "train/loss" in row:
            self._bar.set_postfix(loss=f"{row['train/loss']:.4g}")

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """uint8 [H, W, C] picture to TensorBoard."""
        if self.is_writer:
            self._tb.add_image(tensorboard_tag(name), image, step, dataformats="HWC")

    def write_curves(self) -> None:
        if self.is_writer:
            plot_curves(read_metrics(self.workdir), self.workdir / CURVES_FILE)

    def close(self) -> None:
        self._bar.close()
        if self._tb is not None:
            self._tb.close()
