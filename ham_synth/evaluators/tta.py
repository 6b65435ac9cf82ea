"""Test-time augmentation: a classifier's softmax averaged over symmetric views of each image
(flips and 90-degree rotations, which dermoscopy, with no canonical orientation, allows).

A spec names the views: `none`, a preset (`flips`: identity, both flips and their composition;
`d4`: the 8 symmetries of the square) or names joined by `|` (`identity|flip_lr`).
"""

import jax
import jax.numpy as jnp

# Each view maps images [B, H, W, C] (square) to images of the same shape.
VIEWS = {
    "identity": lambda x: x,
    "flip_lr": lambda x: x[:, :, ::-1],
    "flip_ud": lambda x: x[:, ::-1],
    "rot90": lambda x: jnp.rot90(x, 1, axes=(1, 2)),
    "rot180": lambda x: jnp.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: jnp.rot90(x, 3, axes=(1, 2)),
    "transpose": lambda x: jnp.swapaxes(x, 1, 2),
    "antitranspose": lambda x: jnp.rot90(jnp.swapaxes(x, 1, 2), 2, axes=(1, 2)),
}
PRESETS = {
    "none": (),
    "flips": ("identity", "flip_lr", "flip_ud", "rot180"),
    "d4": tuple(VIEWS),
}


def parse_views(spec: str) -> tuple[str, ...]:
    """The view names a spec stands for; () for `none` (plain evaluation)."""
    if spec in PRESETS:
        return PRESETS[spec]
    names = tuple(name.strip() for name in spec.split("|") if name.strip())
    unknown = sorted(set(names) - set(VIEWS))
    if unknown or not names:
        raise ValueError(
            f"tta={spec!r}: use one of {sorted(PRESETS)} or view names joined by '|' "
            f"from {list(VIEWS)}."
        )
    return names


def averaged(logits_fn, views: tuple[str, ...]):
    """images -> log of the mean softmax of `logits_fn` over `views`: valid logits whose softmax
    is the averaged probabilities (so argmax and every metric read them as any logits)."""

    def log_mean_probs(images):
        log_probs = jnp.stack([jax.nn.log_softmax(logits_fn(VIEWS[v](images))) for v in views])
        return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(len(views))

    return log_mean_probs
