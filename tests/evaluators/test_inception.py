"""The JAX FID Inception equals pytorch-fid's on random weights converted by our converter."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ham_synth import parallel
from ham_synth.evaluators import convert_inception, inception

tr = pytest.importorskip("torch_reference")  # skips the module when torch is not installed

# max |jax - torch| / max |torch| per tensor; elementwise ratios blow up where ReLU gives ~0.
TOLERANCE = 1e-4


def relative_error(actual, reference) -> float:
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert actual.shape == reference.shape
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random stand-in for the published .pth, and our converter's .npz of it."""
    tmp = tmp_path_factory.mktemp("inception")
    pth = tmp / convert_inception.TORCH_WEIGHTS_FILENAME
    tr.write_random_fid_weights(pth, seed=0)
    npz = convert_inception.convert(pth, tmp / inception.WEIGHTS_FILENAME)
    return pth, npz


@pytest.fixture(scope="module")
def images():
    """Three small random images in [0, 1] (pytorch-fid resizes them to 299 like ours)."""
    return np.random.default_rng(0).random((3, 75, 75, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def torch_blocks(weights, images):
    model = tr.load_fid_inception(weights[0], output_blocks=(0, 1, 2, 3))
    return [
        block.reshape(len(images), -1, block.shape[-1]) for block in tr.run_blocks(model, images)
    ]


@pytest.fixture(scope="module")
def jax_run(weights, images):
    """Pool features and block outputs from one compile of our network."""
    variables = inception.load_variables(weights[1])
    apply = jax.jit(lambda v, x: inception.InceptionV3().apply(v, x, mutable=["intermediates"]))
    features, state = apply(variables, images)
    blocks = [state["intermediates"][f"block{i}"][0] for i in range(4)]
    return variables, np.asarray(features), [np.asarray(b) for b in blocks]


@pytest.mark.slow
def test_converted_weights_have_pytorch_fids_parameter_count(jax_run):
    variables = jax_run[0]
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert count == 21_785_568  # pytorch-fid's FID InceptionV3, fc excluded
    kernels = [k for k in traverse_util.flatten_dict(variables["params"]) if k[-1] == "kernel"]
    assert len(kernels) == 94


def test_pool_features_equal_pytorch_fid(jax_run, torch_blocks, images):
    features = jax_run[1]
    assert features.shape == (len(images), inception.FEATURE_DIM) and features.dtype == np.float32
    assert relative_error(features, torch_blocks[3][:, 0]) <= TOLERANCE


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_block_outputs_equal_pytorch_fid(jax_run, torch_blocks, block):
    ours = jax_run[2][block]
    assert relative_error(ours.reshape(torch_blocks[block].shape), torch_blocks[block]) <= TOLERANCE


def test_converter_reads_pytorch_fid_inceptionv3_state_dict_too(weights, jax_run):
    """`blocks.I.J.*` keys (pytorch-fid's wrapper) convert to the same variables."""
    wrapper = tr.load_fid_inception(weights[0])
    state_dict = {k: v.detach().numpy() for k, v in wrapper.state_dict().items()}
    assert any(k.startswith("blocks.3.2.") for k in state_dict)
    converted = convert_inception.torch_to_flax(state_dict)
    jax.tree.map(np.testing.assert_array_equal, converted, jax_run[0])


def test_resize_equals_torch_interpolate(images):
    ours = np.asarray(inception.resize_to_input(jnp.asarray(images)))
    np.testing.assert_allclose((ours + 1) / 2, tr.interpolate_299(images), rtol=0, atol=1e-5)


def test_uint8_images_are_read_as_value_over_255():
    pixels = np.random.default_rng(1).integers(0, 256, (2, 9, 9, 3), dtype=np.uint8)
    from_uint8 = inception.resize_to_input(jnp.asarray(pixels))
    from_float = inception.resize_to_input(jnp.asarray(pixels, jnp.float32) / 255.0)
    np.testing.assert_allclose(from_uint8, from_float, atol=1e-6)
    assert from_uint8.shape == (2, 299, 299, 3)


def test_sharded_batched_extraction_equals_one_call(jax_run, images):
    """2 devices, batch 2: the last batch is padded and its padding dropped."""
    mesh = parallel.make_mesh(num_devices=2)
    feature_fn = inception.make_feature_fn(jax_run[0], mesh)
    features = inception.extract_features(feature_fn, images.__getitem__, len(images), 2, mesh)
    assert features.shape == (3, inception.FEATURE_DIM)
    assert relative_error(features, jax_run[1]) <= 1e-5


def test_missing_weights_say_how_to_convert(tmp_path):
    with pytest.raises(FileNotFoundError, match="ham-synth convert-inception"):
        inception.load_variables(tmp_path / "absent.npz")


def test_default_weights_path_follows_the_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv(inception.CACHE_ENV, str(tmp_path))
    assert inception.default_weights_path() == tmp_path / inception.WEIGHTS_FILENAME


def test_weights_with_a_wrong_shape_are_rejected(weights, tmp_path):
    with np.load(weights[1]) as data:
        flat = dict(data)
    flat["params/Mixed_5b/branch1x1/conv/kernel"] = np.zeros((1, 1, 192, 65), np.float32)
    np.savez(tmp_path / "bad.npz", **flat)
    with pytest.raises(ValueError, match="Mixed_5b/branch1x1/conv/kernel"):
        inception.load_variables(tmp_path / "bad.npz")


@pytest.mark.slow
def test_convert_inception_verb_writes_loadable_weights(weights, tmp_path, jax_run, repo):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ham_synth.main",
            "convert-inception",
            f"--torch_weights={weights[0]}",
            f"--cache_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    variables = inception.load_variables(tmp_path / inception.WEIGHTS_FILENAME)
    jax.tree.map(np.testing.assert_array_equal, variables, jax_run[0])


def test_convert_inception_without_a_pth_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        convert_inception.run(cache_dir=str(tmp_path))
