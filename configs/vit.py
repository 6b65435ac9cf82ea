"""Vision Transformer classifier (the `classify` task).

    ham-synth train --config=configs/vit.py:quickstart --workdir=runs/vit_quickstart

quickstart: 16x16 digits, a 4-block ViT with 4x4 patches (64 wide), batch 64.
smoke: 8x8, 2 tiny blocks, a few steps, for tests (seconds).
"""

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

    config.loss = dict(label_smoothing=0.1)

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
    return config
