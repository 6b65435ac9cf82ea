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


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    num_classes = base.num_classes(config)
    model = make_model(config, config_lib.compute_dtype(config.train.compute_dtype))
    weights = class_weights(config.loss.class_weights, config.data.class_counts, num_classes)
    optimizer = optim.make_optimizer(config.optim, config.train.total_steps)

    def init_variables(rng, batch):
        return model.init(rng, batch["image"])

    def loss_fn(params, batch, rng, step):
        del step
        logits = model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        labels = batch["label"]
        per_example = cross_entropy(logits, labels, num_classes, config.loss.label_smoothing)
        if weights is None:
            loss = per_example.mean()
        else:  # Weighted by the true class, as torch's CrossEntropyLoss(weight=...).
            w = jnp.asarray(weights)[labels]
            loss = jnp.sum(w * per_example) / jnp.sum(w)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return loss, {"accuracy": accuracy}

    def predict(variables, images):
        return model.apply(variables, images)

    return base.Task(
        init=base.make_init(init_variables, optimizer.tx),
        train_step=base.make_simple_step(loss_fn, optimizer, config.train.grad_accum_steps),
        predict_fns={PREDICT: predict},
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
