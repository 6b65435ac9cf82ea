"""Config blocks shared by every model family, and the `configs/FILE.py:arg` parser.

Every number the code uses is a field here or in a family's config file; durations are in steps.
"""

import importlib.util
import json
import pathlib

import ml_collections


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
            parsed[key] = value.lower() in ("1", "true", "yes")
        else:
            parsed[key] = type(default)(value)
    return parsed


def get_base_config() -> ml_collections.ConfigDict:
    """Fields every family shares; a family's file fills `task`, `model`, `loss` and sizes."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Root of every rng: init, data order, per-step noise.
    config.task = ""

    config.model = ml_collections.ConfigDict()
    config.model.name = ""

    config.data = ml_collections.ConfigDict()
    # digits (embedded scikit-learn digits) | ham10000 (built by `ham-synth prepare`, read from
    # data_dir) | dermamnist (MedMNIST npz at data.path) | folder (data.path/<class_name>/*.png).
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
    # (its --val_fraction, --test_fraction, --split_seed) and dermamnist's by MedMNIST.
    config.data.split_seed = 0  # Fixes split membership, independently of `seed`.
    config.data.val_fraction = 0.1
    config.data.test_fraction = 0.1
    # folder: comma-separated label order; empty: sorted folders. The trainer records every
    # source's names here (config.json), as it does num_classes.
    config.data.class_names = ""
    config.data.imbalance = False  # digits: keep 7 classes, subsampled to HAM10000's shares.
    # Training-only augmentation (make_train_dataset; evaluation never augments): ops applied in
    # order to the uint8 image, each with its own grain-seeded rng per stream position, so a
    # resumed run redraws the same ones. Ops: flip_lr | flip_ud (each p=1/2) | rotate(max_degrees)
    # (uniform angle) | zoom(min_scale,max_scale) (log-uniform, >1 magnifies) |
    # color_jitter(brightness,contrast,saturation) (factors uniform in 1 +- x). rotate and zoom-out
    # fill the uncovered margin with a mirror reflection of the image, not black.
    # E.g. "flip_lr|flip_ud|rotate(15)|zoom(0.9,1.1)"; empty: none.
    config.data.augment = ""
    # Class-balanced sampling: records drawn with replacement, weight 1/class_count**alpha (counts
    # in this process's shard), so class shares follow class_count**(1-alpha). 0: off (shuffled
    # epochs, each record once per epoch); 1: every class equally often.
    config.data.balance_alpha = 0.0

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 64  # Global, over all devices and hosts.
    config.train.total_steps = 1000
    config.train.log_every_steps = 50
    config.train.ckpt_every_steps = 250
    config.train.keep_checkpoints = 3
    config.train.sample_every_steps = 250
    config.train.samples_per_class = 8  # Columns in the sample grid (one row per class).
    config.train.num_devices = -1  # Devices in the data-parallel mesh; -1: all.

    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-3  # Peak learning rate.
    config.optim.warmup_steps = 100
    config.optim.schedule_steps = -1  # Length of the cosine decay; -1: train.total_steps.
    config.optim.min_lr_ratio = 0.0  # Final lr as a fraction of the peak.
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 1e-4
    config.optim.grad_clip = 1.0  # Global-norm clipping; 0 disables it.
    config.optim.ema_decay = 0.999
    return config


def apply_smoke_schedule(config: ml_collections.ConfigDict) -> None:
    """The `smoke` variants' schedule: 6 steps of 16 images that log, checkpoint and sample every
    few steps, so a test passes through every branch of the trainer in seconds."""
    config.train.batch_size = 16
    config.train.total_steps = 6
    config.train.log_every_steps = 2
    config.train.ckpt_every_steps = 3
    config.train.sample_every_steps = 3
    config.train.samples_per_class = 2
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
    """The config a training run wrote to `workdir/config.json`, locked."""
    path = pathlib.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"No {path}: is {workdir} the --workdir of a `ham-synth train` run?"
        )
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    config.lock()
    return config
