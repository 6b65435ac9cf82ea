"""The study report's figures, written as PNG files under the report's folder: each synthetic
set's per-class grid and the per-class F1 bars."""

import pathlib

import matplotlib
import numpy as np
from PIL import Image

from ham_synth import fileio, grids
from ham_synth.data import imaging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SET_GRID_COLUMNS = 8  # Images per class in the report's grid of each synthetic set.


def synthetic_grid(folder: pathlib.Path, class_names: list[str], path: pathlib.Path) -> bool:
    """A grid of the first SET_GRID_COLUMNS images of each class of a `ham-synth sample` folder,
    one labelled row per class it holds (what the classifiers were given); False if it is empty."""
    rows, names = [], []
    for name in class_names:
        files = sorted((folder / name).glob("*.png"))[:SET_GRID_COLUMNS]
        if not files:
            continue
        images = []
        for file in files:
            with Image.open(file) as image:
                images.append(np.asarray(imaging.to_rgb(image)))
        images += [np.full_like(images[0], 255)] * (SET_GRID_COLUMNS - len(images))
        rows += images
        names.append(name)
    if not rows:
        return False
    stacked = np.stack(rows).astype(np.float32) / 127.5 - 1.0
    grid = grids.make_grid(stacked, rows=len(names))
    grids.write_png(path, grid, grids.display_scale(stacked.shape[1]), names)
    return True


def per_class_f1_plot(results: dict, class_names: list[str], path: pathlib.Path) -> None:
    """Grouped bars: each condition's mean test F1 per class, with the seeds' std."""
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(class_names)) + 2, 3.5))
    width = 0.8 / len(results)
    x = np.arange(len(class_names))
    for i, (condition, seeds) in enumerate(results.items()):
        values = np.asarray([[s["metrics"][f"{c}/f1"] for c in class_names] for s in seeds])
        spread = values.std(0, ddof=1) if len(values) > 1 else None  # As the tables' ± std.
        ax.bar(x + i * width, values.mean(0), width, yerr=spread, label=condition)
    ax.set_xticks(x + 0.4 - width / 2, class_names)
    ax.set_ylabel("test F1")
    ax.set_ylim(0, 1)
    save(fig, ax, path)


def sweep_plot(series: dict, primary: str, xlabel: str, path: pathlib.Path) -> None:
    """Each condition's paired change of `primary` from its control, with its interval, against
    a sweep's x: `series` is {condition: [(x, mean, low, high)]}."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for condition, rows in series.items():
        x, mean, low, high = map(np.asarray, zip(*sorted(rows), strict=True))
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], marker="o", capsize=3,
                    label=condition)  # fmt: skip
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"change in test {primary}\nfrom the control")
    save(fig, ax, path)


def save(fig, ax, path: pathlib.Path) -> None:
    """The figure, with its legend beside the axes (never over the data), as a PNG at `path`
    (written whole or not at all)."""
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
