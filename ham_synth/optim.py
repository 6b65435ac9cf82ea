"""Optimizers, built in one place from config.optim: one group for a family with one network,
one group per network (`optim.gen`, `optim.disc`) for a family with several."""

import dataclasses
from collections.abc import Callable, Sequence

import jax
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


# A parameter's name ("Transformer/encoderblock_0/LayerNorm_0/scale") -> its lr multiple.
LrScale = Callable[[str], float]


def param_name(path) -> str:
    """A params tree path as the "/"-joined module and parameter names."""
    return "/".join(str(getattr(key, "key", key)) for key in path)


def scale_by_name(lr_scale: LrScale) -> optax.GradientTransformation:
    """Multiplies each update by `lr_scale(its parameter's name)` (no state)."""

    def scale(updates, params=None):
        del params
        return jax.tree_util.tree_map_with_path(
            lambda path, u: u * lr_scale(param_name(path)), updates
        )

    return optax.stateless(scale)


def label_by_name(label: Callable[[str], object]) -> Callable:
    """params -> the tree of `label(name)` for each leaf's parameter name: the form optax takes
    for a weight-decay mask and for multi_transform's labels."""
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: label(param_name(path)), params
    )


DECAY = ("all", "kernels")


def decay_mask(decay: str):
    """optax.adamw's weight-decay mask for `optim.decay`: None (every parameter) for "all", a
    function marking each params leaf named `kernel` for "kernels"."""
    if decay not in DECAY:
        raise ValueError(f"optim.decay={decay!r}; choose one of {DECAY}.")
    if decay == "all":
        return None
    return label_by_name(lambda name: name.rsplit("/", 1)[-1] == "kernel")


def make_optimizer(
    optim: ml_collections.ConfigDict,
    total_steps: int,
    lr_scale: LrScale | None = None,
    updates_per_step: int = 1,
) -> Optimizer:
    """AdamW on the schedule, after global-norm clipping (off when `grad_clip` is 0).

    `lr_scale` gives each parameter a multiple of the lr (and so of its weight decay), e.g.
    layer-wise decay when fine-tuning. A multiple of 0 freezes the parameter: optax's
    multi_transform gives it no update, no weight decay and no optimizer state, and leaves its
    gradient out of the clipping norm. `updates_per_step` (e.g. a GAN's n_disc): the transform
    is applied that many times a train step, so it reads the schedule at its update count over
    that, and `schedule` stays a function of the train step.
    """
    missing = [field for field in GROUP_FIELDS if field not in optim]
    if missing:
        raise ValueError(
            f"The optimizer config lacks {missing}; build it with config_lib.optim_group()."
        )
    schedule = make_schedule(optim, total_steps)
    tx = optax.adamw(
        lambda count: schedule(count // updates_per_step),
        b1=optim.b1,
        b2=optim.b2,
        weight_decay=optim.weight_decay,
        mask=decay_mask(optim.decay),
    )
    if lr_scale is not None:
        tx = optax.chain(tx, scale_by_name(lr_scale))
    if optim.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
    if lr_scale is not None:
        labels = label_by_name(lambda name: "frozen" if lr_scale(name) == 0 else "trained")
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return Optimizer(tx, schedule, optim.ema_decay)


def make_optimizers(
    optim: ml_collections.ConfigDict,
    total_steps: int,
    groups: Sequence[str],
    updates_per_step: dict[str, int] | None = None,
) -> dict[str, Optimizer]:
    """One optimizer per network, from `optim.<group>` (e.g. separate lr and betas, TTUR);
    `updates_per_step` by group, for a network updated several times a step (default 1)."""
    missing = [group for group in groups if group not in optim]
    if missing:
        raise ValueError(
            f"config.optim needs one block per network: {', '.join(f'optim.{g}' for g in groups)}"
            f"; missing {', '.join(f'optim.{g}' for g in missing)}."
        )
    per_step = updates_per_step or {}
    return {
        group: make_optimizer(optim[group], total_steps, updates_per_step=per_step.get(group, 1))
        for group in groups
    }
