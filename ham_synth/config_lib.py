"""Config blocks shared by every model family, and the `configs/FILE.py:arg` parser.

Every number the code uses is a field here or in a family's config file; durations are in steps.
"""

import importlib.util
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
    config.data.name = "digits"  # The embedded default: scikit-learn's handwritten digits.
    config.data.image_size = 16
    config.data.num_classes = 10
    config.data.path = ""  # A file or folder, for sources that read one.
    config.data.data_dir = ""  # Where prepared datasets live, for sources that need one.
    config.data.split = "train"  # train | val | test | all
    config.data.split_seed = 0  # Fixes split membership, independently of `seed`.
    config.data.val_fraction = 0.1
    config.data.test_fraction = 0.1
    config.data.imbalance = False  # digits: keep 7 classes, subsampled to HAM10000's shares.

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
