"""The optax transform and learning-rate schedule, from config.optim."""

import ml_collections
import optax


def make_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup to `optim.lr`, then cosine decay to `lr * min_lr_ratio`."""
    decay_steps = optim.schedule_steps if optim.schedule_steps > 0 else total_steps
    if decay_steps <= optim.warmup_steps:
        raise ValueError(
            f"The schedule ({decay_steps} steps) must be longer than optim.warmup_steps="
            f"{optim.warmup_steps}; lower the warmup or raise train.total_steps."
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim.lr,
        warmup_steps=optim.warmup_steps,
        decay_steps=decay_steps,
        end_value=optim.lr * optim.min_lr_ratio,
    )


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> optax.GradientTransformation:
    """AdamW on the schedule, after global-norm clipping (off when `grad_clip` is 0)."""
    adamw = optax.adamw(
        make_schedule(optim, total_steps),
        b1=optim.b1,
        b2=optim.b2,
        weight_decay=optim.weight_decay,
    )
    if optim.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optim.grad_clip), adamw)
    return adamw
