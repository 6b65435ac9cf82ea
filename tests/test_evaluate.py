"""`ham-synth evaluate` on tiny image folders with random (unconverted) Inception weights."""

import json
import os
import subprocess
import sys

import features_worker
import numpy as np
import pytest
from conftest import FAST_COMPILE, free_port, load_config
from flax import traverse_util
from PIL import Image

from ham_synth import config_lib, evaluate, parallel, state, train, workdir
from ham_synth.data import sources
from ham_synth.evaluators import features, fid, inception
from ham_synth.tasks import base


def write_folder(root, images_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(images_per_class):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """He-scaled random kernels, unit BatchNorm; drawn in numpy, so nothing compiles here. One
    read-only file for the module (22 M normals, 87 MB)."""
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(inception.abstract_variables())
    for key, spec in flat.items():
        if key[-1] == "kernel":
            fan_in = np.prod(spec.shape[:-1])
            flat[key] = rng.normal(0, np.sqrt(2 / fan_in), spec.shape).astype(np.float32)
        else:
            flat[key] = np.full(spec.shape, 1.0 if key[-1] in ("var", "scale") else 0.0, np.float32)
    path = tmp_path_factory.mktemp("inception") / "weights.npz"
    inception.save_variables(traverse_util.unflatten_dict(flat), path)
    return path


def symmetric_sqrtm(a):
    """scipy's sqrtm of a 2048x2048 matrix takes about 2 minutes on 2 CPU cores; with the same
    images on both sides every product here is sigma @ sigma, symmetric PSD, where this is exact."""
    eigenvalues, vectors = np.linalg.eigh((a + a.T) / 2)
    return (vectors * np.sqrt(np.maximum(eigenvalues, 0))) @ vectors.T


def folder_config(path, **overrides):
    data = {
        "data.name": "folder",
        "data.path": str(path),
        "data.split": "all",
        "data.num_classes": 2,
        "data.image_size": 16,
    }
    return load_config("vae.py:smoke", **data, **overrides)


@pytest.mark.slow
def test_evaluate_scores_a_folder_and_caches_the_reference(tmp_path, random_weights, monkeypatch):
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(fid.linalg, "sqrtm", symmetric_sqrtm)
    real_dir = write_folder(tmp_path / "real", images_per_class=4, seed=0)
    config = folder_config(real_dir)
    metrics = evaluate.evaluate(
        str(tmp_path / "w"),
        config,
        str(real_dir),
        fid_batch_size=8,
        inception_weights=random_weights,
    )

    written = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert written["overall"] == metrics["overall"]
    overall = metrics["overall"]
    assert (overall["n_real"], overall["n_fake"]) == (8, 8)
    # The same images on both sides: on each other's manifold, and FID ~ 0.
    assert (overall["precision"], overall["recall"]) == (1.0, 1.0)
    mu, sigma = fid.load_statistics(tmp_path / "w" / "eval" / "real_stats.npz")
    assert abs(overall["fid"]) < 1e-4 * np.trace(sigma)
    assert sorted(metrics["per_class"]) == ["a", "b"]
    assert any("KID" in w for w in metrics["warnings"])

    net = features.FeatureNet(
        features.INCEPTION, None, features.inception_cache_key(random_weights)
    )
    cache = features.reference_cache_path(config.data, net, sources.get_source(config.data))
    assert cache.exists()
    cached, labels, class_names = features.real_features(net, config.data, 8, mesh=None)
    assert cached.shape == (8, inception.FEATURE_DIM) and class_names == ("a", "b")
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1])
    # Other images at the same path and config: another cache file, not the stale features.
    write_folder(real_dir, images_per_class=4, seed=1)
    assert features.reference_cache_path(config.data, net, sources.get_source(config.data)) != cache


def test_evaluate_without_weights_names_the_convert_command(tmp_path):
    config = folder_config(write_folder(tmp_path / "real", images_per_class=1, seed=0))
    with pytest.raises(FileNotFoundError, match="ham-synth convert-inception"):
        evaluate.evaluate(
            str(tmp_path), config, str(tmp_path), inception_weights=tmp_path / "absent.npz"
        )


@pytest.mark.slow
def test_evaluate_samples_a_generator_workdir_then_scores_it(tmp_path, random_weights, monkeypatch):
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / "cache"))
    # A stand-in for the 2048-d sqrtm, which is slow here; FID's value is tested in test_fid.
    monkeypatch.setattr(fid.linalg, "sqrtm", symmetric_sqrtm)
    config = folder_config(write_folder(tmp_path / "real", images_per_class=4, seed=0))
    generator = tmp_path / "vae"
    overrides = {"train.num_devices": 1, "evals.samples.every_steps": -1}  # Its grid is unread.
    train.train_and_evaluate(folder_config(config.data.path, **overrides), generator)

    metrics = evaluate.evaluate(
        str(tmp_path / "w"),
        config,
        generator_workdir=str(generator),
        num_per_class=5,
        fid_batch_size=8,
        inception_weights=random_weights,
        seed=3,
    )
    samples = tmp_path / "w" / "eval" / "synthetic"
    assert sorted(p.name for p in samples.iterdir()) == ["a", "b", "manifest.csv"]
    assert len(list(samples.glob("*/*.png"))) == 10
    assert (metrics["overall"]["n_real"], metrics["overall"]["n_fake"]) == (8, 10)
    assert [metrics["per_class"][c]["n_fake"] for c in ("a", "b")] == [5, 5]
    assert np.isfinite(metrics["overall"]["fid"]) and 0 <= metrics["overall"]["precision"] <= 1
    assert metrics["fake"]["sampling"] == {"num_per_class": 5, "seed": 3}
    written = json.loads((tmp_path / "w" / "eval" / "metrics.json").read_text())
    assert written["fake"]["dir"] == str(samples)

    # Samples already there are kept, and the error says how to score them.
    with pytest.raises(FileExistsError, match=f"--fake_dir={samples}"):
        evaluate.evaluate(
            str(tmp_path / "w"),
            config,
            generator_workdir=str(generator),
            num_per_class=5,
            inception_weights=random_weights,
        )


def test_evaluate_takes_exactly_one_fake_set(tmp_path, random_weights):
    config = folder_config(tmp_path)
    with pytest.raises(ValueError, match="Pass --fake_dir .* or --generator_workdir"):
        evaluate.evaluate(str(tmp_path), config, inception_weights=random_weights)
    with pytest.raises(ValueError, match="one of --fake_dir .* or --generator_workdir"):
        evaluate.evaluate(str(tmp_path), config, "x", "y", inception_weights=random_weights)
    with pytest.raises(ValueError, match="--sample.steps only apply with --generator_workdir"):
        evaluate.evaluate(
            str(tmp_path), config, fake_dir="x", inception_weights=random_weights, steps=10
        )
    with pytest.raises(ValueError, match="needs --num_per_class"):
        evaluate.evaluate(
            str(tmp_path), config, generator_workdir="y", inception_weights=random_weights
        )
    with pytest.raises(ValueError, match="needs --config"):
        evaluate.evaluate(str(tmp_path), fake_dir="x")


@pytest.mark.slow
def test_two_processes_each_read_their_share_and_get_every_feature_in_order(tmp_path, monkeypatch):
    """The multi-host path: 2 CPU processes x 2 devices, joined by jax.distributed. Process 0
    alone has a (wrong) cached reference, as one host might: both must extract instead."""
    weights = tmp_path / "weights.npz"
    weights.write_bytes(b"stands in for converted weights; only its path and stat are read")
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path / "cache_0"))
    data = features_worker.digits_test_data()
    source = sources.get_source(data)
    stale = features.reference_cache_path(
        data,
        features.FeatureNet(features.INCEPTION, None, features.inception_cache_key(weights)),
        source,
    )
    stale.parent.mkdir(parents=True)
    np.savez(stale, features=np.zeros((len(source), 1)), labels=source.labels)

    port = free_port()
    outs = [tmp_path / f"process_{i}.npz" for i in range(2)]
    # CPU only, so two processes never share one GPU where there is one.
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": " ".join(["--xla_force_host_platform_device_count=2", *FAST_COMPILE]),
    }
    jobs = [
        subprocess.Popen(
            [sys.executable, features_worker.__file__, str(i), str(port), str(out)]
            + [str(tmp_path / f"cache_{i}"), str(weights)],
            env=env,
        )
        for i, out in enumerate(outs)
    ]
    try:
        assert [job.wait(timeout=300) for job in jobs] == [0, 0]
    finally:
        for job in jobs:
            job.kill()

    expected = source.images.reshape(len(source), -1)
    results = [np.load(out) for out in outs]
    for result in results:
        np.testing.assert_array_equal(result["features"], expected)
        np.testing.assert_array_equal(result["labels"], source.labels)
        np.testing.assert_array_equal(result["real"], expected)
    # Each record was decoded by one process; every process also reads record 0 for the image
    # shape, and the last batch's padding repeats the last record.
    read = [set(result["read"].tolist()) for result in results]
    assert read[0] | read[1] == set(range(len(source)))
    assert read[0] & read[1] <= {0, len(source) - 1}


def test_classifier_feature_space_scores_real_images_as_real(vit_run, tmp_path):
    """The test split written as PNGs, scored against itself in a ViT run's features: fd about
    0, kd not above 0, precision and recall 1, and nothing called FID."""
    config = config_lib.with_values(config_lib.load_workdir_config(vit_run), {"data.split": "test"})
    source = sources.get_source(config.data)
    for i in range(len(source)):
        record = source[i]
        path = tmp_path / "fake" / source.class_names[record["label"]] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(record["image"]).save(path)
    metrics = evaluate.evaluate(
        str(tmp_path / "w"), config, fake_dir=str(tmp_path / "fake"), features="classifier",
        classifier_workdir=str(vit_run),
    )  # fmt: skip
    overall = metrics["overall"]
    assert "fid" not in overall and "kid" not in overall
    # kd is KID's unbiased estimate: with the same images on both sides its cross term keeps
    # each image's similarity to itself, which the within terms leave out, so it is <= 0.
    assert abs(overall["fd"]) < 1e-6 and overall["kd"] <= 0
    assert overall["precision"] == overall["recall"] == 1.0
    assert metrics["feature_space"].startswith("classifier (step ")
    # The features are the ViT's pre-logits on the best checkpoint: its head maps them to logits.
    mesh = parallel.make_mesh()
    run = workdir.load(vit_run, "best", mesh)
    net = features.get_feature_net("classifier", mesh, classifier_workdir=str(vit_run))
    images = np.stack([source[i]["image"] for i in range(8)])
    head = run.state.ema_params["head"]
    from_features = np.asarray(net.fn(images)) @ np.asarray(head["kernel"]) + head["bias"]
    predict = base.get_predict_fn(run.task, base.PREDICT, "classify")
    logits = predict(state.eval_variables(run.state), images.astype(np.float32) / 127.5 - 1)
    np.testing.assert_allclose(from_features, logits, atol=1e-5)
