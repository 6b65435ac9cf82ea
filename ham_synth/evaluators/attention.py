"""The `attention` evaluator: where the ViT looked. Attention rollout (Abnar & Zuidema 2020) over
every block, drawn on test images: one PNG per class, correct and wrong predictions side by side,
each titled with its true and predicted class.

Rollout: per block, the attention matrix averaged over heads, plus the identity for the residual
path, rows renormalized; the product over blocks (last block on the left) says how much each
input token reaches each output token. The map is the class token's row over the patch tokens
(with `pool="gap"`, the mean row of the patch tokens).
"""

import pathlib

import jax
import matplotlib
import numpy as np

from ham_synth import state as state_lib
from ham_synth.evaluators import classification, common
from ham_synth.tasks import base

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def attention_rollout(attentions: np.ndarray) -> np.ndarray:
    """float[L, B, H, T, T] attention probabilities (rows sum to 1) -> float[B, T, T] rollout:
    prod over layers of rownorm(0.5 * mean_heads(A_l) + 0.5 * I), layer L leftmost."""
    mean = np.asarray(attentions, np.float64).mean(axis=2)
    tokens = mean.shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), mean.shape[1:]).copy()
    for layer in mean:
        mixed = 0.5 * layer + 0.5 * np.eye(tokens)
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout


def patch_maps(rollout: np.ndarray, pool: str) -> np.ndarray:
    """float[B, T, T] rollout -> float[B, g, g] relevance of each patch, scaled to max 1."""
    # token: the class token's row; gap: the logits read the mean of the patch tokens.
    relevance = rollout[:, 0, 1:] if pool == "token" else rollout.mean(axis=1)
    grid = int(round(np.sqrt(relevance.shape[1])))
    maps = relevance.reshape(-1, grid, grid)
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), 1e-12)


def pick_examples(labels, predictions, label: int, per_column: int) -> tuple[list, list]:
    """The first `per_column` correct and wrong predictions of class `label`, by index."""
    of_class = np.flatnonzero(labels == label)
    correct = of_class[predictions[of_class] == label][:per_column]
    wrong = of_class[predictions[of_class] != label][:per_column]
    return correct.tolist(), wrong.tolist()


def plot_class(path, images, maps, labels, predictions, columns, class_names, title) -> None:
    """One class's grid: columns (correct, wrong), each cell the image with its map over it."""
    rows = max(1, *(len(c) for c in columns.values()))
    fig, axes = plt.subplots(rows, 2, figsize=(5.0, 2.6 * rows), squeeze=False)
    for col, (heading, indices) in enumerate(columns.items()):
        for row in range(rows):
            ax = axes[row, col]
            ax.axis("off")
            if row >= len(indices):
                if row == 0:
                    ax.set_title(f"{heading}\n(none)", fontsize=8)
                continue
            i = indices[row]
            size = images[i].shape[0]
            ax.imshow(images[i])
            ax.imshow(maps[i], cmap="jet", alpha=0.45, extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                      interpolation="bilinear")  # fmt: skip
            caption = f"true {class_names[labels[i]]}\npred {class_names[predictions[i]]}"
            ax.set_title((f"{heading}\n" if row == 0 else "") + caption, fontsize=8)
    fig.suptitle(title, fontsize=9)
    classification.save_figure(fig, path)


class AttentionEvaluator:
    """At each run: classifies the split, then draws rollout maps for up to `per_class` correct
    and `per_class` wrong images of each class into evals/<name>/<class>_step_NNNNNNN.png."""

    def __init__(self, *, name, config, task, mesh, workdir, split: str = "test",
                 per_class: int = 4, batch_size: int = 256):  # fmt: skip
        self._attention = jax.jit(base.get_predict_fn(task, base.ATTENTION, config.task))
        self.split = classification.SplitClassifier(name, config, task, mesh, split, batch_size)
        self._pool = config.model.pool
        self._name = name
        self._per_class = per_class
        self.outdir = pathlib.Path(workdir) / "evals" / name

    def maps(self, state, images: np.ndarray) -> np.ndarray:
        """float[N, g, g] rollout maps of uint8 images [N, H, W, 3] under the EMA params."""
        variables = jax.device_get(state_lib.eval_variables(state))  # A handful of images.
        attentions = jax.device_get(
            self._attention(variables, images.astype(np.float32) / 127.5 - 1)
        )
        return patch_maps(attention_rollout(attentions), self._pool)

    def run(self, state, step: int) -> common.Result:
        split, names = self.split, self.split.class_names
        predictions = split.logits(state).argmax(axis=1)
        chosen = {
            label: pick_examples(split.labels, predictions, label, self._per_class)
            for label in range(len(names))
        }
        indices = sorted({i for pair in chosen.values() for part in pair for i in part})
        images = {i: split.source[i]["image"] for i in indices}
        maps = dict(zip(indices, self.maps(state, np.stack(list(images.values()))), strict=True))
        if jax.process_index() == 0:
            for label, (correct, wrong) in chosen.items():
                plot_class(
                    self.outdir / f"{names[label].replace('/', '_')}_step_{step:07d}.png",
                    images, maps, split.labels, predictions,
                    {"correct": correct, "wrong": wrong}, names,
                    f"{self._name}: attention rollout, {split.split} split, class "
                    f"{names[label]}, step {step}",
                )  # fmt: skip
        counts = {names[k]: [len(c), len(w)] for k, (c, w) in chosen.items()}
        return common.Result(details={"split": split.split, "drawn_correct_wrong": counts})
