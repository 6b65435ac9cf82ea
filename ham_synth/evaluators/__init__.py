"""Evaluators: named in `config.evals`, built from the config and the task's predict functions,
run by the trainer on schedule and by `ham-synth evaluate` on a restored run.

Each entry is `config.evals.<name> = {type, every_steps, **options}`; its scalars are logged as
`<name>/<metric>` and its structured outputs go to `workdir/evals/<name>/step_NNNNNNN.*`.
"""

import dataclasses
import inspect
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import jax
import ml_collections
import numpy as np

from ham_synth import fileio
from ham_synth.evaluators import attention, classification, common, realism, samples
from ham_synth.tasks import base

EVALS_DIR = "evals"
OFF = -1  # every_steps: not run in training; `evaluate --evals=NAME` still runs it.


class Evaluator(Protocol):
    def run(self, state, step: int) -> common.Result: ...


# type -> factory(*, name, config, task, mesh, workdir, **options) -> Evaluator.
_EVALUATORS: dict[str, Callable[..., Evaluator]] = {
    "samples": samples.SamplesEvaluator,
    "fid": realism.FidEvaluator,
    "classification": classification.ClassificationEvaluator,
    "attention": attention.AttentionEvaluator,
}
_COMMON_FIELDS = ("type", "every_steps")  # Every entry's; the rest are the factory's options.
# An entry's optional `checkpoint`: "current" evaluates the state in training; "best" (only at the
# end: every_steps 0) evaluates the checkpoint train.best kept, e.g. the final test evaluation.
CHECKPOINTS = ("current", "best")
_BUILD_ARGS = ("name", "config", "task", "mesh", "workdir")  # Passed by make_entry, not options.


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    every_steps: int
    evaluator: Evaluator
    outdir: pathlib.Path  # workdir/evals/<name>
    checkpoint: str = "current"  # One of CHECKPOINTS.

    def is_due(self, step: int, total_steps: int) -> bool:
        """Every `every_steps` steps and at the end of training; 0: only at the end."""
        if self.every_steps == OFF:
            return False
        return step == total_steps or (self.every_steps > 0 and step % self.every_steps == 0)


def output_dir(workdir: pathlib.Path, name: str) -> pathlib.Path:
    return pathlib.Path(workdir) / EVALS_DIR / name


def make_entry(name: str, config, task: base.Task, mesh, workdir: pathlib.Path) -> Entry:
    """Builds `config.evals[name]`; an unknown type or option fails naming the valid ones."""
    spec = config.evals[name]
    missing = [field for field in _COMMON_FIELDS if field not in spec]
    if missing:
        raise ValueError(f"evals.{name} lacks {missing}; every entry has {list(_COMMON_FIELDS)}.")
    if spec.type not in _EVALUATORS:
        raise ValueError(f"evals.{name}.type={spec.type!r}; choose one of {sorted(_EVALUATORS)}.")
    factory = _EVALUATORS[spec.type]
    checkpoint = spec.get("checkpoint", "current")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"evals.{name}.checkpoint={checkpoint!r}; choose one of {CHECKPOINTS}.")
    if checkpoint == "best" and (spec.every_steps > 0 or not config.train.best.metric):
        raise ValueError(
            f"evals.{name}.checkpoint='best' evaluates the best checkpoint at the end of training: "
            "it needs every_steps 0 (or -1) and a train.best.metric to rank checkpoints by."
        )
    options = {k: v for k, v in spec.items() if k not in (*_COMMON_FIELDS, "checkpoint")}
    accepted = [p for p in inspect.signature(factory).parameters if p not in _BUILD_ARGS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"evals.{name} has unknown option(s) {unknown}; type {spec.type!r} takes {accepted}."
        )
    evaluator = factory(name=name, config=config, task=task, mesh=mesh, workdir=workdir, **options)
    return Entry(name, spec.every_steps, evaluator, output_dir(workdir, name), checkpoint)


def from_config(
    config, task: base.Task, mesh, workdir: pathlib.Path, names: Sequence[str] | None = None
) -> list[Entry]:
    """The entries named (None: every entry that is not off), built now, so that a missing
    input (e.g. Inception weights) fails before training starts."""
    evals = config.get("evals", ml_collections.ConfigDict())
    if names is None:
        names = [name for name in evals if evals[name].get("every_steps", 0) != OFF]
    unknown = [name for name in names if name not in evals]
    if unknown:
        raise ValueError(f"No evaluator {unknown} in config.evals; it has {sorted(evals)}.")
    return [make_entry(name, config, task, mesh, workdir) for name in names]


def run_entry(entry: Entry, state, step: int) -> tuple[dict[str, float], Mapping[str, np.ndarray]]:
    """Runs one evaluator (on every process); process 0 writes its scalars and details to
    evals/<name>/step_NNNNNNN.json. Returns ({"<name>/<metric>": value}, images)."""
    result = entry.evaluator.run(state, step)
    scalars = {f"{entry.name}/{key}": float(value) for key, value in result.scalars.items()}
    if scalars and jax.process_index() == 0:
        entry.outdir.mkdir(parents=True, exist_ok=True)
        record = {"step": step, "scalars": scalars, **result.details}
        fileio.write_json(entry.outdir / f"step_{step:07d}.json", record)
    return scalars, result.images


def check_metric(metric: str, entries: Sequence[Entry]) -> None:
    """Refuses a train.best.metric that no evaluator run during training can produce (one run
    only on the best checkpoint, after training, cannot rank the checkpoints)."""
    if not metric:
        return
    name = metric.partition("/")[0]
    if name not in {entry.name for entry in entries}:
        raise ValueError(
            f"train.best.metric={metric!r}, but no evaluator named {name!r} runs in training "
            f"(running: {[e.name for e in entries]}); name an `<entry>/<metric>` key of one."
        )


def check_result(metric: str, entry: Entry, scalars: Mapping[str, float]) -> None:
    """Refuses a train.best.metric its evaluator did not return (a misspelled key), at its first
    evaluation rather than at the end of training, where no checkpoint would have a rank."""
    if metric.partition("/")[0] == entry.name and scalars and metric not in scalars:
        raise ValueError(
            f"train.best.metric={metric!r}, but evaluator {entry.name!r} returns "
            f"{sorted(scalars)}; name one of those."
        )
