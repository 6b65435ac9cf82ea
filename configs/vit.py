"""Vision Transformer classifier (the `classify` task).

    ham-synth train --config=configs/vit.py:quickstart --workdir=runs/vit_quickstart

quickstart: 16x16 digits, a 4-block ViT with 4x4 patches (64 wide), batch 64.
smoke: 8x8, 2 tiny blocks, a few steps, for tests (seconds).
"""

import ml_collections

from ham_synth import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, quickstart=False, smoke=False)
    config = config_lib.get_base_config()
    config.task = "classify"

    config.model.name = "vit"
    # A named size: Ti | S | B | L (width, depth, heads and MLP width of the ViT papers); the
    # four fields below, when > 0, override it; with no name all four are needed.
    config.model.variant = ""
    config.model.width = 64
    config.model.depth = 4
    config.model.num_heads = 4
    config.model.mlp_dim = 128
    config.model.patch_size = 4
    config.model.pool = "token"  # token (class token) | gap (mean of the patch tokens)
    config.model.dropout = 0.0
    config.model.attention_dropout = 0.0
    config.model.stochastic_depth = 0.0  # Drop-path rate of the last block (linear from 0).
    # A local AugReg / big_vision ViT .npz to start from: the head is re-initialized and the
    # position embeddings resampled to this image size (bicubic, as timm). Empty: random init.
    config.model.init_from_npz = ""

    config.loss = dict(
        label_smoothing=0.1,
        # none | inverse (N / (K n_c), scikit-learn's "balanced") | sqrt_inverse | "w0,w1,...":
        # per-class loss weights from the training split's counts (data.class_counts).
        class_weights="none",
    )

    # Classification metrics on val during training and on test at the end; the best checkpoint
    # by val balanced accuracy is kept (`ham-synth evaluate --step=best --evals=test`).
    val_every = ml_collections.FieldReference(250)
    config.evals.val = dict(type="classification", every_steps=val_every, split="val")
    config.evals.test = dict(type="classification", every_steps=0, split="test")
    config.train.best = dict(metric="val/balanced_accuracy", mode="max")

    config.train.batch_size = 64
    config.train.total_steps = 1000
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.05
    config.optim.warmup_steps = 100

    if arg.smoke:
        config.data.image_size = 8
        config.model.width = 16
        config.model.depth = 2
        config.model.num_heads = 2
        config.model.mlp_dim = 32
        config_lib.apply_smoke_schedule(config)
        val_every.set(3)
    return config
