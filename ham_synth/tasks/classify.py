"""Image classification (the ViT): cross-entropy with label smoothing, and a `predict` function
(logits) for evaluators and `ham-synth classify`."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ham_synth import config_lib, models, optim
from ham_synth.models import vit, vit_pretrained
from ham_synth.tasks import base

# predict_fns["predict"](variables, images float32[N, H, W, 3] in [-1, 1]) -> float32[N, classes]
PREDICT = "predict"
# predict_fns["attention"](variables, images) -> float32[depth, N, heads, tokens, tokens]: every
# block's attention probabilities (the attention evaluator's rollout).
ATTENTION = "attention"
# predict_fns["features"](variables, images) -> float32[N, width]: the pooled representation the
# head reads (class token or patch mean after the final LayerNorm), a feature space for realism.
FEATURES = "features"


def make_model(config: ml_collections.ConfigDict, dtype=None) -> vit.ViT:
    """The ViT that config.model describes, for config.data.num_classes classes."""
    m = config.model
    sizes = vit.size_fields(
        m.variant, width=m.width, depth=m.depth, num_heads=m.num_heads, mlp_dim=m.mlp_dim
    )
    return models.get_model(
        m.name,
        num_classes=base.num_classes(config),
        patch_size=m.patch_size,
        pool=m.pool,
        dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        stochastic_depth=m.stochastic_depth,
        dtype=dtype,
        **sizes,
    )


CLASS_WEIGHTS = ("none", "inverse", "sqrt_inverse")


def class_weights(spec: str, class_counts: str, num_classes: int) -> np.ndarray | None:
    """float32[num_classes] loss weight per class, or None for `none`.

    inverse: N / (K n_c), scikit-learn's "balanced"; sqrt_inverse: proportional to n_c^-1/2,
    scaled so the training set's mean weight is 1; or an explicit comma-separated list.
    """
    if spec == "none":
        return None
    if spec not in CLASS_WEIGHTS:
        try:
            weights = np.array([float(w) for w in spec.split(",")], np.float32)
        except ValueError:
            weights = np.zeros(0)
        if len(weights) != num_classes or (weights <= 0).any():
            raise ValueError(
                f"loss.class_weights={spec!r}: use {' | '.join(CLASS_WEIGHTS)} or {num_classes} "
                "positive comma-separated numbers, one per class."
            )
        return weights
    if not class_counts:
        raise ValueError(
            f"loss.class_weights={spec!r} needs data.class_counts, which the trainer records; "
            "build the task from the config pipeline.make_train_dataset returns."
        )
    counts = np.array([int(n) for n in class_counts.split(",")], np.float64)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(
            f"loss.class_weights={spec!r}: classes {empty} have no training images; drop them "
            "with data.classes or give explicit weights."
        )
    weights = 1.0 / counts if spec == "inverse" else counts**-0.5
    return (weights * counts.sum() / (weights * counts).sum()).astype(np.float32)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against one-hot targets smoothed towards uniform."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


TRAINABLE = ("all", "head")


def make_lr_scale(optim_config: ml_collections.ConfigDict, depth: int) -> optim.LrScale | None:
    """Fine-tuning: `trainable="head"` freezes all but the head (a linear probe); `layer_decay`
    < 1 scales block i's lr by layer_decay**(depth + 1 - (i + 1)), the stem's by
    layer_decay**(depth + 1), and leaves the head and final LayerNorm at 1 (BEiT's layer-wise lr
    decay). None when neither is on."""
    trainable, decay = optim_config.trainable, optim_config.layer_decay
    if trainable not in TRAINABLE:
        raise ValueError(f"optim.trainable={trainable!r}; choose one of {TRAINABLE}.")
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"optim.layer_decay={decay} must be in (0, 1]; 1 turns it off.")
    if trainable == "all" and decay == 1.0:
        return None

    def lr_scale(name: str) -> float:
        if trainable == "head" and not name.startswith("head/"):
            return 0.0
        return decay ** (depth + 1 - vit.layer_index(name, depth))

    return lr_scale


def mixup(images, labels, rng, alpha: float):
    """Mixup (Zhang et al. 2018): (images mixed with a permutation of the batch, the permuted
    labels, lam ~ Beta(alpha, alpha)); the loss is lam * loss(labels) + (1 - lam) * loss(perm)."""
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, labels[perm], lam


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    num_classes = base.num_classes(config)
    model = make_model(config, config_lib.compute_dtype(config.train.compute_dtype))
    weights = class_weights(config.loss.class_weights, config.data.class_counts, num_classes)
    lr_scale = make_lr_scale(config.optim, model.depth)
    optimizer = optim.make_optimizer(config.optim, config.train.total_steps, lr_scale)
    alpha = config.loss.mixup_alpha

    def init_variables(rng, batch):
        return model.init(rng, batch["image"])

    def weighted_ce(logits, labels):
        per_example = cross_entropy(logits, labels, num_classes, config.loss.label_smoothing)
        if weights is None:
            return per_example.mean()
        # Weighted by the true class, as torch's CrossEntropyLoss(weight=...).
        w = jnp.asarray(weights)[labels]
        return jnp.sum(w * per_example) / jnp.sum(w)

    def loss_fn(params, batch, rng, step):
        del step
        images, labels = batch["image"], batch["label"]
        dropout_rng, mixup_rng = jax.random.split(rng)
        if alpha > 0:
            images, mixed_labels, lam = mixup(images, labels, mixup_rng, alpha)
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
        loss = weighted_ce(logits, labels)
        if alpha > 0:
            loss = lam * loss + (1.0 - lam) * weighted_ce(logits, mixed_labels)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        # The share of this batch that is synthetic (data.synthetic), as actually drawn.
        synthetic_share = jnp.mean(batch["synthetic"].astype(jnp.float32))
        return loss, {"accuracy": accuracy, "synthetic_share": synthetic_share}

    def predict(variables, images):
        return model.apply(variables, images)

    def attention(variables, images):
        _, state = model.apply(variables, images, sow_weights=True, mutable=["intermediates"])
        blocks = state["intermediates"]["Transformer"]
        probs = [blocks[f"encoderblock_{i}"]["MultiHeadDotProductAttention_1"]
                 ["attention_weights"][0] for i in range(model.depth)]  # fmt: skip
        return jnp.stack(probs).astype(jnp.float32)

    def features(variables, images):
        _, state = model.apply(variables, images, mutable=["intermediates"])
        return state["intermediates"]["pre_logits"][0].astype(jnp.float32)

    return base.Task(
        init=base.make_init(init_variables, optimizer.tx),
        train_step=base.make_simple_step(loss_fn, optimizer, config.train.grad_accum_steps),
        predict_fns={PREDICT: predict, ATTENTION: attention, FEATURES: features},
        load_external=make_load_external(config.model.init_from_npz),
    )


def make_load_external(path: str):
    """Step-0 state -> params and EMA params from the AugReg .npz at `path` (head re-initialized,
    position embeddings resampled); None when no path is set."""
    if not path:
        return None

    def load_external(state):
        params, report = vit_pretrained.load_into(
            jax.device_get(state.params), vit_pretrained.read_npz(path)
        )
        logging.info("model.init_from_npz: %s", report.summary(path))
        return state.replace(params=params, ema_params=params)

    return load_external
