"""Optimizers, built in one place from config.optim: one group for a family with one network,
one group per network (`optim.gen`, `optim.disc`) for a family with several."""

import dataclasses
from collections.abc import Sequence

import ml_collections
import optax

from ham_synth import config_lib

# The fields of one optimizer group, as config_lib.optim_group defines and documents them.
GROUP_FIELDS = tuple(config_lib.optim_group())


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """An optax transform and the schedule it follows, so a train step can report its lr."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    ema_decay: float


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.lr`, then cosine decay to `lr * min_lr_ratio`."""
    decay_steps = optim.schedule_steps if optim.schedule_steps > 0 else total_steps
    if decay_steps <= optim.warmup_steps:
        raise ValueError(
            f"The schedule ({decay_steps} steps) must be longer than optim.warmup_steps="
            f"{optim.warmup_steps}; lower the warmup or raise train.total_steps."
        )
    if optim.warmup_steps == 0:  # optax's warmup logs a warning for a zero-length warmup.
        return optax.cosine_decay_schedule(optim.lr, decay_steps, alpha=optim.min_lr_ratio)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay_steps=decay_steps,
        end_value=optim.lr * optim.min_lr_ratio,
    )


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> Optimizer:
    """AdamW on the schedule, after global-norm clipping (off when `grad_clip` is 0)."""
    missing = [field for field in GROUP_FIELDS if field not in optim]
    if missing:
        raise ValueError(
            f"The optimizer config lacks {missing}; build it with config_lib.optim_group()."
        )
    schedule = make_schedule(optim, total_steps)
    tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay)
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    return Optimizer(tx, schedule, optim.ema_decay)


def make_optimizers(
    optim: ml_collections.ConfigDict, total_steps: int, groups: Sequence[str]
) -> dict[str, Optimizer]:
    """One optimizer per network, from `optim.<group>` (e.g. separate lr and betas, TTUR)."""
    missing = [group for group in groups if group not in optim]
    if missing:
        raise ValueError(
            f"config.optim needs one block per network: {', '.join(f'optim.{g}' for g in groups)}"
            f"; missing {', '.join(f'optim.{g}' for g in missing)}."
        )
    return {group: make_optimizer(optim[group], total_steps) for group in groups}
