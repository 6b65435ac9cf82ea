"""Config blocks shared by every model family, and the `configs/FILE.py:arg` parser.

Every number the code uses is a field here or in a family's config file; durations are in steps.
"""

import importlib.util
import json
import pathlib

import ml_collections

# A config variant's yes / no values (`study.py:derma28,mini=true`); anything else is refused.
BOOLEANS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def parse_arg(arg: str | None, **defaults):
    """Parses `"smoke,res=64"` into a ConfigDict: bare words are True flags, `k=v` typed by default.

    Every key must be one of `defaults`, so a typo in the variant string fails loudly.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for token in filter(None, (arg or "").split(",")):
        key, _, value = token.partition("=")
        if key not in defaults:
            raise ValueError(
                f"Unknown config arg {key!r} in {arg!r}; choose from {sorted(defaults)}."
            )
        default = defaults[key]
        if not value:
            parsed[key] = True
        elif isinstance(default, bool):
            if value.lower() not in BOOLEANS:
                raise ValueError(f"{key}={value!r} in {arg!r}; use one of {sorted(BOOLEANS)}.")
            parsed[key] = BOOLEANS[value.lower()]
        else:
            parsed[key] = type(default)(value)
    return parsed


# data.val_fraction / test_fraction: "the source's own split"; digits and folder then hold out
# DEFAULT_FRACTION of each class for each of val and test.
SOURCE_SPLIT = -1.0
DEFAULT_FRACTION = 0.1

# A `sample` command's sampler settings (`--sample.KEY=VALUE`, e.g. steps, guidance, truncation)
# are its flags with this prefix; the study writes them and `ham-synth sample` reads them.
SAMPLE_SETTING = "sample."

# train.compute_dtype, sample.compute_dtype and evals.fid.compute_dtype: the dtype of
# activations and matmuls. Params and optimizer state are always float32.
COMPUTE_DTYPES = ("float32", "bfloat16")


def compute_dtype(name: str, field: str = "train.compute_dtype"):
    """The jnp dtype a compute-dtype field names."""
    import jax.numpy as jnp  # noqa: PLC0415  (configs load without JAX: `ham-synth` answers at once)

    if name not in COMPUTE_DTYPES:
        raise ValueError(f"{field}={name!r}; choose one of {sorted(COMPUTE_DTYPES)}.")
    return getattr(jnp, name)


def optim_group(**overrides) -> ml_collections.ConfigDict:
    """One optimizer's fields (optim.make_optimizer): `config.optim` for a family with one
    network, `config.optim.<network>` for each network of a family with several."""
    group = ml_collections.ConfigDict()
    group.lr = 1e-3  # Peak learning rate.
    group.warmup_steps = 100
    group.schedule_steps = -1  # Length of the cosine decay; -1: train.total_steps.
    group.min_lr_ratio = 0.0  # Final lr as a fraction of the peak.
    group.b1 = 0.9
    group.b2 = 0.999
    group.weight_decay = 1e-4
    # Which parameters decay: "all", or "kernels" (Dense and Conv weights only, as big_vision and
    # timm do; biases, norm scales, embeddings and tokens are left undecayed).
    group.decay = "all"
    group.grad_clip = 1.0  # Global-norm clipping; 0 disables it.
    # EMA of this network's params (samples and evaluators use it), warmed up: the decay at step
    # t is min(ema_decay, (1 + t) / (10 + t)) (state.ema_decay_at). 0: the EMA is the params.
    group.ema_decay = 0.999
    group.update(overrides)
    return group


def add_generator_evals(config: ml_collections.ConfigDict) -> None:
    """The evaluators every generator config ships: the sample grid (on; evals.samples) and FID
    (off; turn it on with --config.evals.fid.every_steps=N)."""
    # Sampling settings; a family adds its own (sampler, steps, truncation, ...).
    config.sample = ml_collections.ConfigDict()
    config.sample.compute_dtype = "float32"  # float32 | bfloat16, for `sample` and evaluators.
    config.evals.samples = ml_collections.ConfigDict(
        {
            "type": "samples",
            "every_steps": 250,
            "per_class": 8,  # Columns in the grid (one row per class).
        }
    )
    config.evals.fid = ml_collections.ConfigDict(
        {
            "type": "fid",
            "every_steps": -1,
            "split": "test",  # The real images compared with, from config.data.
            "num_samples": 0,  # Generated images; 0: as many as the split, with its labels.
            "per_class": False,  # Also `fid/<class>/<metric>` per class.
            # inception (the FID network; needs `ham-synth convert-inception`) | classifier (a
            # ViT run's pre-logits features: classifier_workdir) | pixels (images average-pooled
            # to pixel_grid x pixel_grid). Only inception gives FID and KID; others say fd, kd.
            "features": "inception",
            "pixel_grid": 4,
            "inception_weights": "",  # Converted weights; empty: the ham_synth cache.
            "classifier_workdir": "",  # The classifier run whose features `classifier` uses.
            "batch_size": 64,  # Images per feature batch (rounded up to the devices).
            "sample_batch_size": 256,  # Images per sampling call.
            "compute_dtype": "float32",  # The feature network's: float32 | bfloat16.
        }
    )


def get_base_config() -> ml_collections.ConfigDict:
    """Fields every family shares; a family's file fills `task`, `model`, `loss` and sizes."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Root of every rng: init, data order, per-step noise.
    config.task = ""

    config.model = ml_collections.ConfigDict()
    config.model.name = ""

    config.data = ml_collections.ConfigDict()
    # digits (embedded scikit-learn digits) | ham10000 (built by `ham-synth prepare`, read from
    # data_dir) | dermamnist (MedMNIST npz at data.path) | mnist (an mnist.npz at data.path:
    # x_train, y_train, x_test, y_test) | folder (data.path/<class_name>/*.png).
    config.data.name = "digits"
    config.data.image_size = 16  # ham10000: 64, 128 or 256 (one prepared dataset each).
    # 0: the source's own count (digits 10, imbalanced digits, ham10000 and dermamnist 7, folder
    # its class folders), filled in by the trainer; > 0: checked against the source.
    config.data.num_classes = 0
    config.data.path = ""  # A file or folder, for sources that read one.
    config.data.data_dir = ""  # Where prepared datasets live; empty: TFDS's default.
    # train | val | test | all; ham10000 also isic2018_test when prepared with it (not in "all").
    config.data.split = "train"
    # digits and folder split here, per class; ham10000's split is fixed by `ham-synth prepare`
    # (its --val_fraction, --test_fraction, --split_seed) and dermamnist's by MedMNIST, so setting
    # these for them is an error.
    config.data.split_seed = 0  # Fixes split membership, independently of `seed`.
    # ham10000: which prepared dataset to read: lesion (splits grouped by lesion, the default) or
    # image (image-level splits, `ham-synth prepare --split_by=image`, as the report we reproduce
    # did; optimistic). Not `data.split`, which names train/val/test. Other sources: lesion.
    config.data.split_by = "lesion"
    # SOURCE_SPLIT (-1): the source's own (digits and folder: DEFAULT_FRACTION each).
    config.data.val_fraction = SOURCE_SPLIT
    config.data.test_fraction = SOURCE_SPLIT
    # folder: comma-separated label order; empty: sorted folders. The trainer records every
    # source's names here (config.json), as it does num_classes.
    config.data.class_names = ""
    # The training split's image count per class, comma-separated in label order; recorded by the
    # trainer like class_names (class weights use it, and config.json keeps it for restores).
    config.data.class_counts = ""
    # The expected share of each class among the training stream's draws (real draws weighted by
    # data.balance_alpha, mixed with any data.synthetic images), comma-separated in label order;
    # recorded by the trainer (logit adjustment uses it as the training prior).
    config.data.class_shares = ""
    # The share of each class's draws that are synthetic images (data.synthetic), in label order;
    # recorded by the trainer beside class_shares (the study's training-stream table).
    config.data.synthetic_shares = ""
    # Keep only these classes (comma-separated names, as in data.class_names), any source; labels
    # become 0..k-1 in this order and the names are kept. One class trains unconditionally.
    config.data.classes = ""
    # Keep this share of each class's training images (rounded up; drawn with data.split_seed),
    # e.g. to ask whether synthetic data helps more when real data is scarce; val and test stay
    # whole. 1: all.
    config.data.train_fraction = 1.0
    # digits: keep 7 classes; train subsampled to HAM10000's shares, val and test balanced (at
    # least 15 of each class; splits.imbalanced_split).
    config.data.imbalance = False
    # Training-only augmentation (make_train_dataset; evaluation never augments): ops applied in
    # order to the uint8 image, each with its own grain-seeded rng per stream position, so a
    # resumed run redraws the same ones. Ops: flip_lr | flip_ud (each p=1/2) | rotate(max_degrees)
    # (uniform angle) | zoom(min_scale,max_scale) (log-uniform, >1 magnifies) |
    # color_jitter(brightness,contrast,saturation) (factors uniform in 1 +- x). rotate and zoom-out
    # fill the uncovered margin with a mirror reflection of the image, not black.
    # random_crop(size) | center_crop(size) | resize(size) (bicubic) change the size; the result
    # must match evaluation's (data.eval_preprocess).
    # E.g. "flip_lr|flip_ud|rotate(15)|zoom(0.9,1.1)"; empty: none.
    config.data.augment = ""
    # Evaluation preprocessing (classifier evaluators, `ham-synth classify`): deterministic ops
    # center_crop(size) | resize(size), e.g. "center_crop(224)" on images stored at 256 with
    # augment "random_crop(224)|flip_lr". The model's input size is image_size after these.
    config.data.eval_preprocess = ""
    # Class-balanced sampling: records drawn with replacement, weight 1/class_count**alpha (counts
    # in this process's shard), so class shares follow class_count**(1-alpha). 0: off (shuffled
    # epochs, each record once per epoch); 1: every class equally often.
    config.data.balance_alpha = 0.0
    # Threads that assemble training batches (grain's ReadOptions.num_threads). Decoding and
    # augmenting in Python hold the GIL, so threads beyond the spare cores slow the step down;
    # 0: one per core beyond the first, at most 16 (one thread on a 2-core machine).
    config.data.read_threads = 0
    # Worker processes that read and augment training batches (grain's multiprocessing
    # prefetch), each with data.read_threads threads, out of the GIL of the training process;
    # 0: none, batches are assembled in this process. Worker w makes batches w, w + n, ..., so
    # the batches are the same for any count. A resume keeps the count (it is in the saved
    # iterator state).
    config.data.worker_count = 0
    # Real + synthetic training data (data/synthetic.py); val and test stay real.
    config.data.synthetic = ml_collections.ConfigDict(
        {
            # Comma-separated `ham-synth sample` output folders (their manifest.csv); empty: off.
            "dirs": "",
            # add (all, or per_class of each class) | balance (top each class up to per_class; 0:
            # to the largest real class) | ratio (that share of the draws of each class the set
            # holds; every class keeps the real-only stream's share) | only (synthetic alone:
            # train on synthetic, test on real). add and balance mix by image count, so they
            # need data.balance_alpha=0.
            "policy": "add",
            "per_class": 0,
            "ratio": 0.0,  # The ratio policy's synthetic share of each such class, in (0, 1).
            # The loss weight of a synthetic image relative to a real one (1: the same; 0: seen
            # but not learned from). The classifier's weighted mean renormalises over the batch.
            "loss_weight": 1.0,
            # Comma-separated classes to take synthetic images of; empty: every class the
            # folders hold.
            "classes": "",
        }
    )

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # Global, over all devices and hosts.
    config.train.total_steps = 1000
    config.train.log_every_steps = 50
    config.train.ckpt_every_steps = 250
    config.train.keep_checkpoints = 3
    config.train.num_devices = -1  # Devices in the data-parallel mesh; -1: all.
    # Activations and matmuls: float32 | bfloat16 (mixed precision, for GPUs and TPUs; slower on
    # XLA:CPU). Params, optimizer state, normalization statistics, softmax and losses stay float32.
    config.train.compute_dtype = "float32"
    # Gradient accumulation: each batch runs as this many microbatches in sequence (less memory,
    # same update; VAE, DDPM and the classifier). It must divide train.batch_size, and runs
    # fastest when it divides the batch on each device.
    config.train.grad_accum_steps = 1
    # Keep the best checkpoint by an evaluator's metric beside the latest keep_checkpoints, e.g.
    # metric="val/balanced_accuracy", mode="max". A checkpoint is saved at every step that computes
    # it; `ham-synth evaluate --step=best` and `init_from="W:best"` restore it. Empty: off.
    config.train.best = ml_collections.ConfigDict({"metric": "", "mode": "max"})

    # Warm start: "WORKDIR[:STEP]" (STEP: latest, best or a number) initializes params, EMA params
    # and model state from another run before step 0. Where a run's weights come from, first
    # match wins: (1) a checkpoint in this workdir (resume; never re-applies 2 or 3),
    # (2) init_from, (3) external weights named by a model field, (4) random init.
    config.init_from = ""

    config.optim = optim_group()

    # Named evaluators (evaluators/__init__.py): each `{type, every_steps, ...options}`; their
    # scalars are logged as `<name>/<metric>`, their files go to workdir/evals/<name>/.
    # every_steps: N > 0 every N steps and at the end of training; 0 only at the end (and by
    # `ham-synth evaluate`); -1 off in training (`ham-synth evaluate --evals=NAME` still runs it).
    config.evals = ml_collections.ConfigDict()
    return config


# train.* counts that must be whole numbers >= 1.
POSITIVE_TRAIN_FIELDS = ("total_steps", "batch_size", "log_every_steps", "ckpt_every_steps",
                         "keep_checkpoints")  # fmt: skip


def check_train_fields(train: ml_collections.ConfigDict) -> None:
    """Raises naming the first of POSITIVE_TRAIN_FIELDS that is not a whole number >= 1."""
    for field in POSITIVE_TRAIN_FIELDS:
        value = train[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"train.{field}={value!r}; it must be a whole number >= 1.")


def apply_smoke_schedule(config: ml_collections.ConfigDict) -> None:
    """The `smoke` variants' schedule: 6 steps of 16 images that log, checkpoint and sample every
    few steps, so a test passes through every branch of the trainer in seconds."""
    config.train.batch_size = 16
    config.train.total_steps = 6
    config.train.log_every_steps = 2
    config.train.ckpt_every_steps = 3
    if "samples" in config.evals:
        config.evals.samples.every_steps = 3
        config.evals.samples.per_class = 2
    if "warmup_steps" in config.optim:  # One optimizer group; GAN groups do not warm up.
        config.optim.warmup_steps = 2


def with_values(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """A copy of `config` with `{"a.b": value}` fields set; the copy stays locked if `config` was,
    so only existing fields can be set."""
    updated = config.copy_and_resolve_references()
    updated.update_from_flattened_dict(values)
    return updated


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`"configs/vae.py:smoke"` -> that file's `get_config("smoke")`, locked as `--config=` gives
    it, so setting a field that does not exist fails."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    if module_spec is None:
        raise FileNotFoundError(f"No config file at {path!r}.")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.lock()
    return config


def load_workdir_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
    """The config a training run wrote to `workdir/config.json`, locked; one written by an older
    ham_synth, without today's shared fields, is refused naming them."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"No {path}: is {workdir} the --workdir of a `ham-synth train` run?"
        )
    try:
        fields = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not valid JSON ({error}); restore it from a backup."
        ) from error
    missing = missing_shared_fields(fields)
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}: an "
            "older ham_synth wrote it, and this one reads only runs with today's fields. Train "
            "the run again, or read it with the version that wrote it."
        )
    config = ml_collections.ConfigDict(fields)
    config.lock()
    return config


def flat_fields(fields: dict, prefix: str = "") -> dict[str, object]:
    """{"train.total_steps": 600, ...}: every leaf field of nested dicts by its dotted name; an
    empty block has none."""
    flat = {}
    for key, value in fields.items():
        name = f"{prefix}{key}"
        flat |= flat_fields(value, name + ".") if isinstance(value, dict) else {name: value}
    return flat


def missing_shared_fields(fields: dict) -> list[str]:
    """The fields every family's config has (get_base_config's; optimizer groups aside, as a
    family with several networks nests them) that a config.json's `fields` lack."""
    shared = json.loads(get_base_config().to_json_best_effort())
    shared.pop("optim")
    return sorted(flat_fields(shared).keys() - flat_fields(fields).keys())


def class_names(config: ml_collections.ConfigDict) -> list[str]:
    """The class names the trainer recorded in data.class_names, in label order."""
    if not config.data.class_names:
        raise ValueError(
            "data.class_names is empty: build from the config that pipeline.make_train_dataset "
            "returns, or set --config.data.class_names=a,b,... (a run's config.json records them)."
        )
    return config.data.class_names.split(",")


def named_classes(text: str, class_names, field: str) -> list[str]:
    """The comma-separated class names in `text` (config field `field`), each one of
    `class_names`; empty text gives []."""
    named = [c.strip() for c in text.split(",") if c.strip()]
    unknown = sorted(set(named) - set(class_names))
    if unknown:
        raise ValueError(f"{field} names {unknown}; the data's classes are {list(class_names)}.")
    return named
