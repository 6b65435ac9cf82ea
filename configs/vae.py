"""Class-conditional VAE on the embedded digits (or any source via data.*).

    ham-synth train --config=configs/vae.py:quickstart --workdir=runs/vae_quickstart

quickstart: 16x16 digits, 2,000 steps, about 70 s on 2 CPU cores; the sample grid shows legible
digits, one class per row (docs/results.md).
smoke: 8x8, a few steps, for tests (seconds).
derma28: DermaMNIST at 28² (`--config.data.path=dermamnist.npz`), for the study: encoder widths
  32-64 (28 -> 14 -> 7), a 32-d latent, 5,000 steps of 64. Not yet timed.
ham64: HAM10000 at 64² (`--config.data.data_dir=D`), for the study on GPUs: widths 32-64-128-256
  (64 -> 4), a 128-d latent, 50,000 steps of 64. Not yet timed.
Variants combine: `configs/vae.py:quickstart,imbalance`.
"""

from ham_synth import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(
        arg, quickstart=False, smoke=False, imbalance=False, derma28=False, ham64=False
    )
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
    # Class-balanced draws (weight 1 / count**alpha): the study asks generators for the rarest
    # classes. On imbalanced digits at 800 steps (docs/results.md), samples read as their class:
    # alpha 0: 0.57; 0.5: 0.82; 1: 0.91, with the lowest FD and the highest precision.
    config.data.balance_alpha = 1.0
    config.optim.lr = 2e-3
    config.optim.ema_decay = 0.99

    if arg.smoke:
        config.data.image_size = 8
        config.model.channels = (8, 16)
        config.model.latent_dim = 4
        config.model.class_embed_dim = 4
        config.loss.kl_warmup_steps = 2
        config_lib.apply_smoke_schedule(config)
    if arg.derma28:
        config.data.name = "dermamnist"
        config.data.image_size = 28
        config.model.channels = (32, 64)
        config.model.latent_dim = 32
        config.train.total_steps = 5000
        config.evals.samples.every_steps = 1000
    if arg.ham64:
        config.data.name = "ham10000"
        config.data.image_size = 64
        config.model.channels = (32, 64, 128, 256)
        config.model.latent_dim = 128
        config.loss.kl_warmup_steps = 5000
        config.train.total_steps = 50_000
        config.train.ckpt_every_steps = 5000
        config.evals.samples.every_steps = 5000
    return config
