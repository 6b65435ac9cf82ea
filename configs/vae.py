"""Class-conditional VAE on the embedded digits (or any source via data.*).

    ham-synth train --config=configs/vae.py:quickstart --workdir=runs/vae_quickstart

quickstart: 16x16 digits, 2,000 steps, about 3.5 minutes on 2 CPU cores; the loss falls from
~420 (step 50) to ~29 and the sample grid shows legible digits, one class per row.
smoke: 8x8, a few steps, for tests (seconds).
Variants combine: `configs/vae.py:quickstart,imbalance`.
"""

from ham_synth import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, quickstart=False, smoke=False, imbalance=False)
    config = config_lib.get_base_config()
    config_lib.add_generator_evals(config)  # samples (on) and fid (off)
    config.task = "vae"

    config.model.name = "vae"
    config.model.channels = (16, 32)  # Encoder widths; the decoder mirrors them.
    config.model.latent_dim = 16
    config.model.class_embed_dim = 16

    config.loss = dict(
        beta=1.0,  # Weight of the KL term once warmed up.
        kl_warmup_steps=500,  # beta rises linearly from 0 over these steps.
    )

    config.data.imbalance = arg.imbalance

    config.train.total_steps = 2000
    config.optim.lr = 2e-3
    config.optim.ema_decay = 0.99

    if arg.smoke:
        config.data.image_size = 8
        config.model.channels = (8, 16)
        config.model.latent_dim = 4
        config.model.class_embed_dim = 4
        config.loss.kl_warmup_steps = 2
        config_lib.apply_smoke_schedule(config)
    return config
