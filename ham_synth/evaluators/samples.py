"""The `samples` evaluator: a class-conditional grid from the EMA params, one row per class (named
on the left), from the same noise at every step, written to workdir/samples/step_NNNNNNN.png."""

import pathlib

import jax
import numpy as np

from ham_synth import config_lib, grids
from ham_synth.evaluators import common
from ham_synth.tasks import base, sampling

SAMPLES_DIR = "samples"


class SamplesEvaluator:
    def __init__(self, *, name, config, task, mesh, workdir, per_class: int = 8):
        self._sample_fn = base.get_predict_fn(task, base.SAMPLE, config.task)
        self._class_names = config_lib.class_names(config)
        self._mesh = mesh
        self.labels = grids.class_grid_labels(len(self._class_names), per_class)
        self.rng = common.evaluator_rng(config.seed, name)
        self.outdir = pathlib.Path(workdir) / SAMPLES_DIR

    def images(self, state) -> np.ndarray:
        """float32[classes * per_class, H, W, C] in [-1, 1]: the grid's images, row-major."""
        return sampling.generate_all(
            self._sample_fn,
            state,
            self.labels,
            self.rng,
            batch_size=len(self.labels),
            mesh=self._mesh,
        )

    def run(self, state, step: int) -> common.Result:
        images = self.images(state)
        grid = grids.make_grid(images, rows=len(self._class_names))
        if jax.process_index() == 0:
            grids.write_png(
                self.outdir / f"step_{step:07d}.png",
                grid,
                scale=grids.display_scale(images.shape[1]),
                row_labels=self._class_names,
            )
        return common.Result(images={"samples": grid})
