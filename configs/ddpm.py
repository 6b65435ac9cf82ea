"""Class-conditional DDPM (UNet, ε- or v-prediction, classifier-free guidance).

    ham-synth train --config=configs/ddpm.py:quickstart --workdir=runs/ddpm_quickstart
    ham-synth sample --workdir=runs/ddpm_quickstart --num_per_class=50 \\
        --sample.sampler=ddim --sample.steps=50

quickstart: 16x16 digits, a 2-level UNet with 16 channels (AdaGN conditioning), v-prediction,
batch 32, 2,000 steps: 8.5 minutes on 2 CPU cores. `sample` with DDIM-50 and guidance 2 then
takes 2.5 minutes for 500 images; tools/check_digit_samples.py scores them (docs/results.md).
smoke: 8x8, a tiny UNet, a few steps, for tests (seconds).
derma28: DermaMNIST at 28² (`--config.data.path=dermamnist.npz`): the quickstart UNet at 32
channels (levels 28² and 14², attention only at the 14² bottleneck), batch 32, 2,500 steps:
0.57 s per step on 2 CPU cores (a measured run and its sampling time: docs/results.md).
ham64: Ho et al.'s CIFAR-10 recipe (128 channels, mults 1-2-2-2, 2 res blocks, attention at
16², dropout 0.1, GroupNorm of 32 groups, linear β 1e-4..0.02, T=1000, ε-prediction, lr 2e-4
held constant after 5,000 warmup steps, EMA 0.9999, grad clip 1) at 64²: the same four levels
now run at 64/32/16/8, so attention at 16² sits one level deeper; 38M parameters (35.7M in the
paper; AdaGN adds a projection per block). Batch 64 instead of 128 to fit one GPU at 4x the
pixels; 500k steps instead of 800k for HAM10000's 10k images. Plus classifier-free guidance:
label dropout 0.1, w at sampling.
"""

from ham_synth import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(arg, quickstart=False, smoke=False, derma28=False, ham64=False)
    config = config_lib.get_base_config()
    config_lib.add_generator_evals(config)  # samples (on) and fid (off)
    config.task = "ddpm"

    config.model.name = "unet"
    config.model.channels = 16
    config.model.channel_mults = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.num_heads = 4
    config.model.dropout = 0.0
    config.model.norm_groups = 8  # GroupNorm groups (Ho et al.: 32); divides every width.

    config.diffusion = dict(
        schedule="cosine",  # linear | cosine
        num_train_steps=1000,  # T
        beta_start=1e-4,  # linear schedule only
        beta_end=0.02,
        prediction="v",  # eps | v: what the UNet predicts and the MSE is taken on.
        p_uncond=0.1,  # Label dropout: how often the null class trains the unconditional model.
    )
    config.sample.update(
        sampler="ddim",  # ddpm | ddim | dpmpp_2m
        steps=50,
        guidance=2.0,  # Classifier-free guidance w; 0 is the plain conditional model.
        eta=0.0,  # DDIM stochasticity; 1 matches DDPM's posterior variance.
        clip_denoised=True,  # Clip each x0 estimate to [-1, 1].
    )

    config.train.batch_size = 32
    config.train.total_steps = 2000
    config.evals.samples.every_steps = 1000
    config.evals.samples.per_class = 6
    # Class-balanced draws (weight 1 / count**alpha): the study asks generators for the rarest
    # classes. On imbalanced digits at 600 steps (docs/results.md), samples read as their class /
    # within-class diversity: alpha 0: 0.56 / 1.06 (noise); 0.5: 0.91 / 0.83; 1: 0.99 / 0.66.
    config.data.balance_alpha = 1.0
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.995

    if arg.smoke:
        config.data.image_size = 8
        config.model.channels = 8
        config.model.attention_resolutions = ()  # The bottleneck's attention is always there.
        config.model.num_heads = 2
        config.diffusion.num_train_steps = 50
        config.sample.steps = 5
        config_lib.apply_smoke_schedule(config)
    if arg.derma28:
        config.data.name = "dermamnist"
        config.data.image_size = 28
        config.model.channels = 32
        config.model.attention_resolutions = ()
        config.train.total_steps = 2500
        config.train.ckpt_every_steps = 500
        config.evals.samples.every_steps = 500
    if arg.ham64:
        config.data.name = "ham10000"
        config.data.image_size = 64
        config.model.channels = 128
        config.model.channel_mults = (1, 2, 2, 2)
        config.model.num_res_blocks = 2
        config.model.attention_resolutions = (16,)
        config.model.dropout = 0.1
        config.model.norm_groups = 32
        config.diffusion.schedule = "linear"
        config.diffusion.prediction = "eps"
        config.train.batch_size = 64
        config.train.total_steps = 500_000
        config.train.log_every_steps = 100
        config.train.ckpt_every_steps = 5000
        config.evals.samples.every_steps = 5000
        config.optim.lr = 2e-4
        config.optim.warmup_steps = 5000
        config.optim.min_lr_ratio = 1.0  # Ho et al. hold the rate; no cosine decay.
        config.optim.weight_decay = 0.0
        config.optim.ema_decay = 0.9999
    return config
