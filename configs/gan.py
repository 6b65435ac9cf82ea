"""Class-conditional GAN: SNGAN-style generator with class-conditional BatchNorm, projection
discriminator with spectral norm, hinge loss, two optimizers, lazy R1, DiffAugment (+ADA), EMA of G.

    ham-synth train --config=configs/gan.py:quickstart --workdir=runs/gan_quickstart
    ham-synth sample --workdir=runs/gan_quickstart --num_per_class=50
    python tools/check_digit_samples.py --synthetic_dir=runs/gan_quickstart/synthetic

quickstart: 16x16 digits, class-conditional, 2 D updates per G update, batch 64, lr 4e-4, 2,500
steps: about 4-6 minutes on 2 CPU cores. A classifier trained on real digits labels 99.6% of its
samples as their conditioned class (docs/results.md has the per-class figures and history).
smoke: 8x8, tiny nets, a few steps through every branch (R1, 2 D updates, DiffAugment, ADA).
sevens: the seed document's experiment, an unconditional GAN on the 7s only (`data.classes="7"`:
one class, so no class conditioning). Embedded digits (145 train 7s at 16x16), 2,000 steps: 5.4
minutes on 2 CPU cores. `--config.data.name=mnist
--config.data.path=mnist.npz --config.data.image_size=28` is the document's data (6,265 MNIST 7s
at 28x28; the generator's three levels then start at 7x7); not run here (no MNIST offline).
derma28: DermaMNIST at 28² (`--config.data.path=dermamnist.npz`), for the study: DiffAugment and
ADA (target 0.6) and R1 (gamma 0.1) on, as for small data; 2,500 steps, about 15 min on 2 CPU
cores. On dermamnist_dev the derma28 ViT labels 43% of its images as their class, 0.86 of its
own recall on real images (docs/results.md).
ham64: HAM10000 at 64² for a GPU, SNGAN/BigGAN-style widths (G 512-256-128-64-32 from 4x4, D
64-128-256-512 down to 4x4; 14.5M parameters), DiffAugment + ADA, R1 gamma 0.1 every 16 steps,
100k steps of batch 64 (about 910 epochs of HAM10000's 7k train images, StyleGAN2-ADA's regime
for 10k-image sets). 11.0 s per step on 2 CPU cores, about a tenth of a ddpm.py:ham64 step
(docs/results.md). Its GPU time is still to measure:
`python tools/benchmark.py --cases=config --config=configs/gan.py:ham64`.
"""

from ham_synth import config_lib


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(
        arg, quickstart=False, smoke=False, sevens=False, derma28=False, ham64=False
    )
    config = config_lib.get_base_config()
    config_lib.add_generator_evals(config)  # samples (on) and fid (off)
    config.task = "gan"

    # The GAN task builds models "generator" and "discriminator" (models/gan_nets.py).
    config.model.name = "gan"
    config.model.latent_dim = 64
    config.model.gen_channels = (128, 64, 32)  # Coarse to fine; the first level is S / 2**2.
    config.model.disc_channels = (32, 64)  # Fine to coarse; each level halves the size.
    config.model.bn_momentum = 0.99  # Generator BatchNorm running statistics (used to sample).

    config.gan = dict(
        loss="hinge",  # hinge | nonsaturating
        # D updates per G update, inside one jitted step. Each takes its own 1/n_disc of the
        # step's real batch (so train.batch_size must be a multiple of it) with as many fresh
        # fakes; the G update draws train.batch_size fakes. On digits, 1 left each class's
        # samples nearly identical (within-class diversity 0.27 of the real digits'); 2 gave
        # 0.66 at the same accuracy (measured when both D updates reused the whole batch).
        n_disc=2,
        # R1 weight on real images, gamma / 2 * E||grad_x D(T(x))||^2 with the gradient taken
        # through the augmentation T (StyleGAN2-ADA); 0: off.
        r1_gamma=0.0,
        # Lazy R1: on the first D update of every r1_interval-th step, scaled by r1_interval *
        # n_disc (the D updates per R1 computation), so gamma means the same for any n_disc.
        r1_interval=16,
        # DiffAugment ops applied to real and fake alike: translation | cutout | color;
        # empty: none.
        augment="",
        augment_p=1.0,  # Each op's probability per image (the start value when ADA is on).
        ada_target=0.0,  # > 0: adapt p so that E[sign D(real)] stays near it (ADA: 0.6).
        ada_kimg=100,  # ADA: p can move 0 -> 1 in this many thousand images.
        # sample.batch_norm="standing": the EMA generator's own BatchNorm statistics, averaged
        # over this many batches of train.batch_size (class-balanced) in every sampling call.
        standing_stats_batches=16,
    )
    config.sample.update(
        truncation=0.0,  # > 0: z from a normal truncated to [-t, t] (fidelity over diversity).
        # The EMA generator's BatchNorm statistics: standing (its own, recomputed) | ema (an EMA
        # of the training generator's) | running (the training generator's); tasks/gan.py.
        batch_norm="standing",
    )
    # One optimizer per network (TTUR: set their lr and betas apart). SNGAN's Adam: lr 2e-4,
    # b1 0, b2 0.9; constant lr (min_lr_ratio 1), no warmup, clipping or weight decay. ema_decay
    # of `gen` is the EMA generator that samples and evaluators use; `disc`'s is unused. The
    # digits quickstart takes twice SNGAN's lr: at 600 steps 86.4% of its samples are read as
    # their class (every class >= 35 of 50), against 49.0% at 2e-4 (8e-4: 87.6%).
    sngan_adam = dict(
        lr=4e-4, b1=0.0, b2=0.9, weight_decay=0.0, grad_clip=0.0, warmup_steps=0, min_lr_ratio=1.0
    )
    config.optim = dict(
        gen=config_lib.optim_group(**sngan_adam, ema_decay=0.999),
        disc=config_lib.optim_group(**sngan_adam),
    )

    # Class-balanced draws (weight 1 / count**alpha): the study asks generators for the rarest
    # classes. On imbalanced digits at 600 steps (docs/results.md), samples read as their class /
    # within-class diversity: alpha 0: 0.26 / 1.14 (noise); 0.5: 0.78 / 0.77; 1: 1.00 / 0.39
    # (each class collapses to a mode or two, k-NN recall 0.06).
    config.data.balance_alpha = 0.5
    config.train.batch_size = 64
    config.train.total_steps = 2500
    config.train.log_every_steps = 100
    config.train.ckpt_every_steps = 500
    config.evals.samples.every_steps = 500

    if arg.smoke:
        config.data.image_size = 8
        config.model.latent_dim = 8
        config.model.gen_channels = (16, 8)
        config.model.disc_channels = (8, 16)
        config.gan.n_disc = 2
        config.gan.r1_gamma = 1.0
        config.gan.r1_interval = 2
        config.gan.augment = "translation,cutout,color"
        config.gan.augment_p = 0.5
        config.gan.ada_target = 0.6
        config.gan.standing_stats_batches = 2
        config_lib.apply_smoke_schedule(config)
    if arg.sevens:
        config.data.classes = "7"
        config.train.total_steps = 2000
    if arg.derma28 or arg.ham64:  # SNGAN's lr on real images; not re-measured at 4e-4.
        for group in ("gen", "disc"):
            config.optim[group].lr = 2e-4
    if arg.derma28:
        config.data.name = "dermamnist"
        config.data.image_size = 28
        config.gan.augment = "translation,cutout,color"
        config.gan.ada_target = 0.6
        config.gan.r1_gamma = 0.1
    if arg.ham64:
        config.data.name = "ham10000"
        config.data.image_size = 64
        config.model.latent_dim = 128
        config.model.gen_channels = (512, 256, 128, 64, 32)
        config.model.disc_channels = (64, 128, 256, 512)
        config.gan.augment = "translation,cutout,color"
        config.gan.ada_target = 0.6
        config.gan.r1_gamma = 0.1
        config.train.total_steps = 100_000
        config.train.ckpt_every_steps = 5000
        config.evals.samples.every_steps = 5000
    return config
