"""`ham-synth study`: does synthetic data help the classifier? (ham_synth/study/plan.py)

    ham-synth study --config=configs/study.py:quickstart --workdir=runs/study

Trains each generator, samples its synthetic set, trains the ViT on real data and on real +
each set (and on synthetic only) over several seeds, and writes W/report.md.

quickstart: imbalanced embedded digits at 16² (HAM10000's class shares in train; balanced val
  and test); the VAE, GAN (with DiffAugment + R1) and DDPM quickstart recipes at a few hundred
  steps, drawing classes balanced; 150 images of each of the six minority classes, a quarter of
  each such class's draws synthetic (policy ratio: every class keeps the real-only runs' share);
  the VAE's set again, kept where the real-only ViT gives its class p >= 0.5; the DDPM-only
  condition trains on its whole set (150 of each minority class, 50 of the largest); the ViT
  quickstart at 600 steps over 3 seeds. It demonstrates the machinery, not a scientific result;
  its figures are in docs/results.md.
smoke: 8x8, every family's smoke config, 2 classifier seeds, for tests.
mini (with another variant, e.g. `derma28,mini`): that variant's DDPM and ViT alone, one seed of
  each, real vs real + ddpm (no filtered, dose, pre-training or synthetic-only conditions); the
  GPU check's mini-study (tools/gpu_check.sh).
derma28: DermaMNIST at 28² (`--config.data.path=dermamnist.npz`), every family at its derma28
  recipe and 2 generator seeds; 1,000 images of each minority class, a quarter of each one's
  draws synthetic (the DDPM's also at 0.1 and 0.5), the DDPM's set filtered, pre-trained on and
  trained on alone (the whole set: 1,000 of each minority class, 500 of nv); the classifier is
  vit.py:derma28_study (9.5 min a run on 2 CPU cores, 30 runs). At full length it is many CPU
  hours; lower the step counts through flags, e.g.
  `--config.classifier.overrides.train.total_steps=N` with `...overrides.optim.warmup_steps=M`.
  The lowered runs on dermamnist_dev, their times and their results are in docs/results.md.
ham64: HAM10000 prepared at 64 (`--config.data.data_dir=D`), for GPUs: every family at its ham64
  recipe, 2,000 images of each minority class at the same ratio, the DDPM-only condition on the
  whole set (2,000 of each minority class, 1,000 of nv), the ViT over 5 seeds;
  `--config.study.parallel_runs=8` on an 8-GPU host.
  GPU hours, estimated from step times measured on one H200 (docs/benchmarks.md) and labelled as
  estimates: the DDPM's 500k steps at 46 ms (bfloat16; 69 ms float32) are 6.4 h (9.6 h); the
  GAN's 100k steps about 0.2 h (its step costs a tenth of the DDPM's on CPU); the VAE's 50k steps
  under 0.5 h; sampling about 27k images per generator with DDIM-50 takes minutes (10k in 1.9
  min); each of the 30 ViT runs (5 real-only, 25 with synthetic data; 20k steps of a 145-GFLOP
  step; ViT-S/16 ran 3.6 TFLOP in 51.5 ms) a few minutes. About 8-11 GPU-hours in all, 6.5-10 h
  of wall time with 8 GPUs, set by the DDPM. Not run here (no HAM10000, no GPU in this session).
"""

import ml_collections

from ham_synth import config_lib


def use_recipes(config, variant: str, *, data, generator_steps, per_class, tstr_per_class,
                classifier_variant=None):  # fmt: skip
    """Every family at its `variant` recipe on real dermoscopy (not imbalanced digits), the
    classifier at `classifier_variant` (default: `variant`), with each recipe's own length and
    the classifier's warmup set here so that flags can lower them (a shorter classifier run must
    shorten its warmup too); DDIM-50 sampling."""
    config.data.update(imbalance=False, **data)
    for name, steps in generator_steps.items():
        config.generators[name].config = f"configs/{name}.py:{variant}"
        config.generators[name].overrides.train.total_steps = steps
    config.generators.ddpm.sample.steps = 50
    config.synthetic.per_class = per_class
    config.synthetic.tstr_per_class = tstr_per_class
    config.classifier.config = f"configs/vit.py:{classifier_variant or variant}"
    recipe = config_lib.load_config(config.classifier.config)
    config.classifier.overrides = dict(
        train=dict(total_steps=recipe.train.total_steps),
        optim=dict(warmup_steps=recipe.optim.warmup_steps),
    )


def get_config(arg: str | None = None):
    arg = config_lib.parse_arg(
        arg, quickstart=False, smoke=False, derma28=False, ham64=False, mini=False
    )
    config = ml_collections.ConfigDict()
    # The data every run trains and tests on (the `data.*` fields of each run's config).
    # train_fraction and split_by (ham10000: lesion | image) are there to sweep.
    config.data = dict(name="digits", image_size=16, imbalance=True, path="", data_dir="",
                       train_fraction=1.0, split_by="lesion")  # fmt: skip
    # Each generator: its config file and variant, and overrides of that config's fields (nested
    # as in the config), and sampler flags for its `sample` run (e.g. steps=20), which a sweep can
    # name: generators.ddpm.sample.guidance (classifier-free w; the recipes' 2.0),
    # generators.gan.sample.truncation (0: none).
    config.generators = dict(
        vae=dict(config="configs/vae.py:quickstart", overrides=dict(train=dict(total_steps=800)),
                 sample={}),
        # The small-data GAN: DiffAugment + R1 (on imbalanced digits at 600 steps, 0.84 of its
        # samples read as their class against 0.78 without; docs/results.md).
        gan=dict(config="configs/gan.py:quickstart",
                 overrides=dict(train=dict(total_steps=600),
                                gan=dict(augment="translation,cutout,color", r1_gamma=0.1)),
                 sample=dict(truncation=0.0)),
        ddpm=dict(config="configs/ddpm.py:quickstart", overrides=dict(train=dict(total_steps=600)),
                  sample=dict(steps=20, guidance=2.0)),
    )  # fmt: skip
    # How many synthetic images to make and how the classifier mixes them in (its
    # data.synthetic): the one place these are set.
    config.synthetic = dict(
        classes="",  # Comma-separated classes to generate; empty: all but the largest real one.
        # ratio: that share of each generated class's draws is synthetic, every class keeping its
        # real-only share (per_class images sampled per class) | balance: top each class up to
        # per_class (0: the largest real class) | add: per_class of each generated class. balance
        # and add mix by image count with uniform real draws, so the study adds a real-only
        # control drawn that way (real:uniform) and compares them with it.
        policy="ratio",
        per_class=150,
        ratio=0.25,
        loss_weight=1.0,  # A synthetic image's loss weight relative to a real one's.
        tstr_per_class=50,  # Images of every class for the synthetic-only condition.
        # min_confidence > 0: also sample each of `generators` (comma-separated; empty: all)
        # again, keeping an image only where the real-only seed-0 ViT gives its class at least
        # that probability (He et al. 2023), each dropped image drawn up to max_draws times;
        # condition real+<g>:filtered, against the same control as real+<g>. Not with balance.
        filter=dict(min_confidence=0.5, max_draws=4, generators="vae"),
    )
    # The classifier: config file and variant, and overrides (nested as in the config).
    # other_seeds: overrides for every classifier seed but 0; the report shows seed 0's attention
    # maps alone, so the others skip drawing them. Quickstart: val at steps 300 and 600.
    config.classifier = dict(
        config="configs/vit.py:quickstart",
        overrides=dict(train=dict(total_steps=600), evals=dict(val=dict(every_steps=300))),
        other_seeds=dict(evals=dict(attention=dict(every_steps=-1))),
    )
    # classifiers: each classifier condition trains this many times (config.seed 0..S-1).
    # generators: each generator trains, and its set is sampled, this many times (seeds 0..G-1);
    # classifier seed s reads generator seed s mod G, so with G > 1 the paired intervals cover
    # the generators' variance too. At most `classifiers`.
    config.seeds = dict(classifiers=3, generators=1)
    config.conditions = dict(
        real_plus_all=False,  # Also real + every generator's set at once.
        # Also these generators' sets alone (comma-separated; TSTR: tested on real); empty: none.
        synthetic_only="ddpm",
        # Also pre-train on these generators' sets alone, then fine-tune on real data from the
        # last checkpoint (condition pretrain_<g>), the two together at the real-only runs' step
        # budget, pretrain_fraction of it pre-training; empty: none.
        pretrain="",
        pretrain_fraction=0.5,
        # Also real + each of these generators' sets at these ratios besides synthetic.ratio
        # (comma-separated both; condition real+<g>:ratio=<r>): a dose-response within one study.
        dose=dict(generators="", ratios=""),
    )
    # The realism stage: each set against the real test split in the real-only ViT's features
    # (always) and in Inception's when its weights exist (`ham-synth convert-inception`).
    config.realism = dict(inception_weights="")  # Converted weights; empty: the ham_synth cache.
    # A synthetic image is a near-copy when, in pixels and in the ViT's features, it is closer to
    # a training image than this quantile of the real test images' nearest-training distances.
    # exclude_near_copies: `sample` draws such images again (in pixels: the study's ViT is
    # trained after sampling), so the classifiers never see them.
    config.memorization = dict(quantile=0.01, exclude_near_copies=False)
    config.report = dict(primary_metric="balanced_accuracy")  # The verdicts' metric.
    # Ablations: "FIELD=v1,v2;FIELD=v1,v2" over this config's fields, e.g.
    # "synthetic.per_class=100,300;data.train_fraction=0.1,0.25,0.5,1.0". Every point of the grid
    # is a study; runs that are the same at several points are made once; report.md tabulates the
    # points, each point's own report is in points/<label>/report.md. Empty: no sweep.
    config.sweep = ""
    # JAX's persistent compilation cache, shared by the runs; empty: $JAX_COMPILATION_CACHE_DIR,
    # else ~/.cache/ham_synth/jax.
    # parallel_runs > 1: independent runs side by side, each a process on its own GPU
    # (CUDA_VISIBLE_DEVICES=0..parallel_runs-1); 1: one after another in this process.
    config.study = dict(compilation_cache="", parallel_runs=1)

    if arg.smoke:
        config.data.image_size = 8
        for name in config.generators:
            config.generators[name].config = f"configs/{name}.py:smoke"
            config.generators[name].overrides = {}
        config.generators.ddpm.sample.steps = 3
        config.synthetic.per_class = 30
        config.synthetic.tstr_per_class = 10
        config.classifier.config = "configs/vit.py:smoke"
        config.classifier.overrides = {}
        config.seeds.classifiers = 2
        config.conditions.synthetic_only = "vae"
        config.conditions.pretrain = "vae"
        # The smoke ViT barely learns: a low bar, so that the filtered set is not empty.
        config.synthetic.filter.update(min_confidence=0.01, generators="vae")
    if arg.derma28:
        # The classifier: vit.py:derma28_study, the best ViT within 10 minutes on 2 CPU cores.
        use_recipes(config, "derma28", data=dict(name="dermamnist", image_size=28),
                    generator_steps=dict(vae=5000, gan=2500, ddpm=2500), per_class=1000,
                    tstr_per_class=500, classifier_variant="derma28_study")  # fmt: skip
        config.conditions.pretrain = "ddpm"
        config.conditions.dose = dict(generators="ddpm", ratios="0.1,0.5")
        config.synthetic.filter.generators = "ddpm"
        config.seeds.generators = 2
    if arg.ham64:
        use_recipes(config, "ham64", data=dict(name="ham10000", image_size=64),
                    generator_steps=dict(vae=50_000, gan=100_000, ddpm=500_000),
                    per_class=2000, tstr_per_class=1000)  # fmt: skip
        config.seeds.classifiers = 5
        config.synthetic.filter.generators = "ddpm"
    if arg.mini:
        for name in ("vae", "gan"):
            del config.generators[name]
        config.seeds.update(classifiers=1, generators=1)
        config.conditions.update(synthetic_only="", pretrain="")
        config.conditions.dose = dict(generators="", ratios="")
        config.synthetic.filter.min_confidence = 0.0
    return config
