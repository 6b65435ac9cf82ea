"""The ViT and the classify task: AugReg's parameter layout and timm's parameter count, and
gradient accumulation equal to the full batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from flax import traverse_util

from ham_synth import parallel, train, workdir
from ham_synth.models import vit


def test_vit_s16_has_augreg_names_and_timms_parameter_count():
    timm = pytest.importorskip("timm")
    model = vit.ViT(num_classes=7, patch_size=16, **vit.size_fields("S/16"))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    assert flat["embedding/kernel"].shape == (16, 16, 3, 384)
    assert flat["cls"].shape == (1, 1, 384)
    assert flat["Transformer/posembed_input/pos_embedding"].shape == (1, 197, 384)
    block = "Transformer/encoderblock_11/"
    assert flat[block + "MultiHeadDotProductAttention_1/query/kernel"].shape == (384, 6, 64)
    assert flat[block + "MultiHeadDotProductAttention_1/out/kernel"].shape == (6, 64, 384)
    assert flat[block + "MlpBlock_3/Dense_0/kernel"].shape == (384, 1536)
    assert flat["head/kernel"].shape == (384, 7)
    reference = timm.create_model("vit_small_patch16_224", num_classes=7, pretrained=False)
    assert sum(x.size for x in flat.values()) == sum(p.numel() for p in reference.parameters())


def _train(accum_steps: int, steps: int = 3):
    config = load_config("vit.py:smoke", **{"train.grad_accum_steps": accum_steps})
    mesh = parallel.make_mesh()
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    step = train.make_train_step(built.task, mesh)
    batches = iter(built.dataset)
    for i in range(steps):
        state, metrics = step(
            state, parallel.to_global_batch(next(batches), mesh), jax.random.key(i)
        )
    return jax.device_get(state.params), jax.device_get(metrics)


def test_gradient_accumulation_matches_the_full_batch_on_eight_devices():
    full_params, full_metrics = _train(1)
    accum_params, accum_metrics = _train(2)
    assert jax.device_count() == 8  # conftest: 16 images = 2 per device, 1 per microbatch
    for name in ("train/loss", "train/accuracy", "train/grad_norm"):
        np.testing.assert_allclose(accum_metrics[name], full_metrics[name], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(accum_params), jax.tree.leaves(full_params), strict=True):
        # Adam divides by sqrt(v): a grad near 0 turns float noise into ~1e-6 of a ~1e-3 step.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_must_divide_the_batch():
    with pytest.raises(ValueError, match="must divide train.batch_size"):
        _train(3, steps=1)
