"""The `fid` evaluator: FID / KID / precision-recall of N samples from the EMA params against a
real split, overall and per class, in a pluggable feature space.

Only the Inception space gives `fid` and `kid`; any other (e.g. `pixels`, a classifier's
features) reports `fd` and `kd`, and the JSON beside them names the space.
"""

import warnings

import numpy as np
from absl import logging

from ham_synth import config_lib, grids, parallel
from ham_synth.evaluators import common, fid
from ham_synth.evaluators import features as features_lib
from ham_synth.tasks import base, sampling

# Metric names in a space other than Inception's, which must not be called FID or KID.
_NON_INCEPTION_NAMES = {"fid": "fd", "kid": "kd", "kid_std": "kd_std"}
_SCALARS = ("fid", "kid", "kid_std", "precision", "recall")


def fake_labels(real_labels: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """Labels to generate: the real split's own (0: as many), or `num_samples` drawn from a seeded
    permutation of them, cycled, so class shares follow the real split."""
    if num_samples <= 0:
        return np.asarray(real_labels, np.int32)
    order = np.random.default_rng(seed).permutation(real_labels)
    return np.resize(order, num_samples).astype(np.int32)


def space_names(metrics: dict, is_inception: bool) -> dict:
    """One `fid.compute_metrics` row with every key renamed outside the Inception space."""
    names = {} if is_inception else _NON_INCEPTION_NAMES
    return {names.get(k, k): v for k, v in metrics.items()}


def named_metrics(metrics: dict, is_inception: bool) -> dict[str, float]:
    """The scalars of one `fid.compute_metrics` row, renamed outside the Inception space."""
    names = {} if is_inception else _NON_INCEPTION_NAMES
    return {names.get(k, k): float(metrics[k]) for k in _SCALARS}


class FidEvaluator:
    """Reads the real split's features at construction (so missing weights or data fail before
    training), then at each run samples, extracts and scores."""

    def __init__(
        self,
        *,
        name,
        config,
        task,
        mesh,
        workdir,
        split: str = "test",
        num_samples: int = 0,
        per_class: bool = False,
        features: str = features_lib.INCEPTION,
        pixel_grid: int = 4,
        inception_weights: str = "",
        classifier_workdir: str = "",
        batch_size: int = 64,
        sample_batch_size: int = 256,
        compute_dtype: str = "float32",
    ):
        del workdir  # Its JSON goes where every evaluator's does.
        self._sample_fn = base.get_predict_fn(task, base.SAMPLE, config.task)
        self._mesh = mesh
        self._seed = config.seed
        self._rng = common.evaluator_rng(config.seed, name)
        self._per_class = per_class
        self._batch_size = parallel.round_to_devices(batch_size, mesh)
        self._sample_batch_size = sample_batch_size
        self.net = features_lib.get_feature_net(
            features,
            mesh,
            pixel_grid=pixel_grid,
            inception_weights=inception_weights,
            classifier_workdir=classifier_workdir,
            compute_dtype=compute_dtype,
        )
        data = config_lib.with_values(config, {"data.split": split}).data
        self._class_names = tuple(config_lib.class_names(config))
        self.real, self.real_labels, real_names = features_lib.real_features(
            self.net, data, self._batch_size, mesh
        )
        if tuple(real_names) != self._class_names:
            raise ValueError(
                f"evals.{name}: the {split!r} split's classes {list(real_names)} differ from the "
                f"model's {list(self._class_names)}."
            )
        self.labels = fake_labels(self.real_labels, num_samples, config.seed)
        logging.info(
            "evals.%s: %d real %s images, %d samples per evaluation, %s features.",
            name,
            len(self.real),
            split,
            len(self.labels),
            self.net.name,
        )

    def fake_features(self, state) -> np.ndarray:
        images = sampling.generate_all(
            self._sample_fn,
            state,
            self.labels,
            self._rng,
            batch_size=self._sample_batch_size,
            mesh=self._mesh,
        )
        # Quantized as the PNG files `sample` writes, so this equals scoring those files.
        images = grids.to_uint8(images)
        return features_lib.image_features(self.net, images, self._batch_size, self._mesh)

    def run(self, state, step: int) -> common.Result:
        del step
        fake = self.fake_features(state)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            overall = fid.compute_metrics(self.real, fake, seed=self._seed)
            per_class = (
                fid.per_class_metrics(
                    self.real,
                    self.real_labels,
                    fake,
                    self.labels,
                    self._class_names,
                    seed=self._seed,
                )
                if self._per_class
                else {}
            )
        inception_space = self.net.is_inception
        scalars = named_metrics(overall, inception_space)
        for class_name, metrics in per_class.items():
            for key, value in named_metrics(metrics, inception_space).items():
                scalars[f"{class_name}/{key}"] = value
        details = {
            "feature_space": self.net.name,
            "overall": overall,
            "per_class": per_class,
            "warnings": sorted({str(w.message) for w in caught}),
        }
        return common.Result(scalars=scalars, details=details)
