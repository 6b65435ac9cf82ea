"""Image classification (the ViT): cross-entropy with label smoothing, optional class weights,
logit adjustment and mixup / CutMix, and a `predict` function (logits) for evaluators and
`ham-synth classify`."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ham_synth import config_lib, models, optim
from ham_synth.models import vit, vit_pretrained
from ham_synth.tasks import base


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
        stem=m.stem,
        dropout=m.dropout,
        attention_dropout=m.attention_dropout,
        stochastic_depth=m.stochastic_depth,
        locality_attention=m.locality_attention,
        dtype=dtype,
        **sizes,
    )


CLASS_WEIGHTS = ("none", "inverse", "sqrt_inverse")


def recorded_numbers(text: str, field: str, user: str) -> np.ndarray:
    """float64 numbers of a comma-separated field the trainer records from the data
    (`data.class_counts`, `data.class_shares`); `user` names the knob that needs it."""
    if not text:
        raise ValueError(
            f"{user} needs {field}, which the trainer records; build the task from the config "
            "pipeline.make_train_dataset returns."
        )
    return np.array([float(x) for x in text.split(",")], np.float64)


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
    counts = recorded_numbers(class_counts, "data.class_counts", f"loss.class_weights={spec!r}")
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
    labels, lam ~ Beta(alpha, alpha)); the loss is lam * loss(labels) + (1 - lam) * loss(perm).
    `labels` is any pytree of per-example arrays (e.g. labels and synthetic flags): each leaf is
    permuted alike, so the second loss term reads everything from the partner."""
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    mixed = lam * images + (1.0 - lam) * images[perm]
    return mixed, _permuted(labels, perm), lam


def _permuted(per_example, perm):
    return jax.tree.map(lambda leaf: leaf[perm], per_example)


def cutmix(images, labels, rng, alpha: float):
    """CutMix (Yun et al. 2019): a box of a permutation of the batch pasted into every image, its
    area fraction 1 - lam for lam ~ Beta(alpha, alpha), centred uniformly and clipped at the
    border; returns (images, the permuted labels, lam recomputed from the clipped box), as
    `mixup` does."""
    lam_rng, perm_rng, y_rng, x_rng = jax.random.split(rng, 4)
    _, h, w, _ = images.shape
    ratio = jnp.sqrt(1.0 - jax.random.beta(lam_rng, alpha, alpha))
    cy, cx = jax.random.uniform(y_rng) * h, jax.random.uniform(x_rng) * w
    rows, cols = jnp.arange(h) + 0.5, jnp.arange(w) + 0.5  # Pixel centres.
    inside_y = jnp.abs(rows - cy) < ratio * h / 2
    inside_x = jnp.abs(cols - cx) < ratio * w / 2
    box = (inside_y[:, None] & inside_x[None, :])[None, :, :, None]
    perm = jax.random.permutation(perm_rng, images.shape[0])
    lam = 1.0 - jnp.mean(box.astype(jnp.float32))
    return jnp.where(box, images[perm], images), _permuted(labels, perm), lam


def mix_batch(images, labels, rng, mixup_alpha: float, cutmix_alpha: float):
    """Mixup or CutMix, whichever is on (alpha > 0); with both, each batch takes one of them with
    probability 1/2 (timm's switch). Returns (images, the partners' `labels`, lam)."""
    if not cutmix_alpha:
        return mixup(images, labels, rng, mixup_alpha)
    if not mixup_alpha:
        return cutmix(images, labels, rng, cutmix_alpha)
    mixup_rng, cutmix_rng, switch_rng = jax.random.split(rng, 3)
    use_cutmix = jax.random.bernoulli(switch_rng)
    return jax.tree.map(
        lambda a, b: jnp.where(use_cutmix, a, b),
        cutmix(images, labels, cutmix_rng, cutmix_alpha),
        mixup(images, labels, mixup_rng, mixup_alpha),
    )


def logit_offsets(tau: float, class_shares: str, num_classes: int) -> np.ndarray | None:
    """float32[num_classes] tau * log(prior) added to the logits in the training loss only
    (logit-adjusted cross-entropy, Menon et al. 2021): the model then learns the class-balanced
    posterior, and plain argmax predicts for equal class priors. The prior is the training
    stream's class shares (data.class_shares, after data.balance_alpha and any synthetic
    images). None when tau is 0."""
    if not tau:
        return None
    prior = log_prior(
        class_shares, "data.class_shares", num_classes, f"loss.logit_adjustment={tau}"
    )
    return (tau * prior).astype(np.float32)


def log_prior(text: str, field: str, num_classes: int, user: str) -> np.ndarray:
    """float64[num_classes] log of the normalized shares or counts a recorded `field` holds
    (data.class_shares, data.class_counts); `user` needs each class's to be positive."""
    numbers = recorded_numbers(text, field, user)
    if len(numbers) != num_classes or (numbers <= 0).any():
        raise ValueError(
            f"{user} needs a positive prior for each of the {num_classes} classes; "
            f"{field}={text!r}. Drop empty classes with data.classes."
        )
    return np.log(numbers / numbers.sum())


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    num_classes = base.num_classes(config)
    model = make_model(config, config_lib.compute_dtype(config.train.compute_dtype))
    weights = class_weights(config.loss.class_weights, config.data.class_counts, num_classes)
    lr_scale = make_lr_scale(config.optim, model.depth)
    optimizer = optim.make_optimizer(config.optim, config.train.total_steps, lr_scale)
    mixup_alpha, cutmix_alpha = config.loss.mixup_alpha, config.loss.cutmix_alpha
    offsets = logit_offsets(config.loss.logit_adjustment, config.data.class_shares, num_classes)

    def init_variables(rng, batch):
        return model.init(rng, batch["image"])

    synthetic_weight = config.data.synthetic.loss_weight

    def example_weights(labels, synthetic):
        """Each example's loss weight: its true class's (as torch's CrossEntropyLoss(weight=...))
        times data.synthetic.loss_weight if synthetic; None when every example weighs 1."""
        w = None if weights is None else jnp.asarray(weights)[labels]
        if synthetic_weight != 1.0:
            s = jnp.where(synthetic, synthetic_weight, 1.0)
            w = s if w is None else w * s
        return w

    def weighted_ce(logits, labels, synthetic):
        if offsets is not None:
            logits = logits + jnp.asarray(offsets)
        per_example = cross_entropy(logits, labels, num_classes, config.loss.label_smoothing)
        w = example_weights(labels, synthetic)
        if w is None:
            return per_example.mean()
        # A batch whose every example weighs 0 (all synthetic at loss_weight 0) adds no loss.
        return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1e-12)

    def loss_fn(params, batch, rng, step):
        del step
        images, labels = batch["image"], batch["label"]
        dropout_rng, mix_rng = jax.random.split(rng)
        synthetic = batch["synthetic"]
        mixing = mixup_alpha > 0 or cutmix_alpha > 0
        if mixing:
            # The partner's label and synthetic flag weigh the second term: a synthetic image at
            # data.synthetic.loss_weight 0 teaches nothing, as itself or as a partner.
            images, partner, lam = mix_batch(
                images, (labels, synthetic), mix_rng, mixup_alpha, cutmix_alpha
            )
        logits = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_rng})
        loss = weighted_ce(logits, labels, synthetic)
        if mixing:
            loss = lam * loss + (1.0 - lam) * weighted_ce(logits, *partner)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        # The share of this batch that is synthetic (data.synthetic), as actually drawn.
        synthetic_share = jnp.mean(synthetic.astype(jnp.float32))
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
        predict_fns={base.PREDICT: predict, base.ATTENTION: attention, base.FEATURES: features},
        load_external=make_load_external(config.model.init_from_npz),
        init_fields=("model.init_from_npz",),
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
