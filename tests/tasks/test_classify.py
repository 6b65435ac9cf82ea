"""The ViT and the classify task: AugReg's parameter layout and timm's parameter count, 1 vs 8
devices, overfitting one batch, gradient accumulation equal to the full batch, AugReg .npz
loading, the conv and shifted-patch stems, locality attention and fine-tuning knobs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config
from flax import traverse_util

from ham_synth import metric_writer, parallel, train, workdir
from ham_synth.models import vit, vit_pretrained
from ham_synth.tasks import classify


def _import_timm():
    """timm, after torch_reference stubs the CUDA-only torchvision modules it would load."""
    pytest.importorskip("torch")
    from evaluators import torch_reference  # noqa: F401, PLC0415

    return pytest.importorskip("timm")


def test_vit_s16_has_augreg_names_and_timms_parameter_count():
    timm = _import_timm()
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


def _train(accum_steps: int, steps: int = 3, num_devices: int = -1, **overrides):
    """Params and last metrics after `steps` train steps of vit.py:smoke on `num_devices`."""
    config = load_config(
        "vit.py:smoke",
        **{"train.grad_accum_steps": accum_steps, "train.num_devices": num_devices},
        **overrides,
    )
    mesh = parallel.make_mesh(num_devices)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    step = train.make_train_step(built.task, mesh)
    batches = iter(built.dataset)
    for i in range(steps):
        state, metrics = step(
            state, parallel.to_global_batch(next(batches), mesh), jax.random.key(i)
        )
    return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.slow
def test_eight_devices_match_one_with_dropout_drop_path_mixup_cutmix_a_conv_stem_and_lsa():
    noisy = {
        "model.dropout": 0.1,
        "model.stochastic_depth": 0.2,
        "loss.mixup_alpha": 0.4,
        "loss.cutmix_alpha": 1.0,
        "model.stem": "conv",
        "model.locality_attention": True,
        "loss.logit_adjustment": 1.0,
    }
    one_params, one_metrics = _train(1, num_devices=1, **noisy)
    eight_params, eight_metrics = _train(1, num_devices=8, **noisy)
    for name in ("train/loss", "train/accuracy", "train/grad_norm"):
        np.testing.assert_allclose(eight_metrics[name], one_metrics[name], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(eight_params), jax.tree.leaves(one_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_conv_stem_halves_the_grid_per_3x3_convolution_up_to_the_patch_grid():
    model = vit.ViT(num_classes=7, patch_size=4, stem="conv", pool="token",
                    **vit.size_fields("", width=32, depth=1, num_heads=2, mlp_dim=64))  # fmt: skip
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))["params"]
    shapes = {k: v.shape for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
    assert shapes["stem/conv_0/kernel"] == (3, 3, 3, 16)
    assert shapes["stem/conv_1/kernel"] == (3, 3, 16, 32)
    assert shapes["stem/embedding/kernel"] == (1, 1, 32, 32)
    assert shapes["Transformer/posembed_input/pos_embedding"] == (1, 1 + 7 * 7, 32)
    assert vit.layer_index("stem/conv_1/kernel", depth=1) == 0
    with pytest.raises(ValueError, match="power of two"):
        vit.ViT(num_classes=7, patch_size=6, stem="conv", width=32, depth=1, num_heads=2,
                mlp_dim=64).init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))  # fmt: skip


def _shift_reference(x, dy, dx):
    """x moved dy rows down and dx columns right, zeros where nothing moved in (numpy)."""
    out = np.roll(x, (dy, dx), axis=(1, 2))
    out[:, : max(dy, 0)] = out[:, x.shape[1] + min(dy, 0) :] = 0
    out[:, :, : max(dx, 0)] = out[:, :, x.shape[2] + min(dx, 0) :] = 0
    return out


@pytest.mark.parametrize("dy, dx", [(1, -1), (-2, 2), (2, 0), (-1, -2)])
def test_shift_moves_the_image_and_fills_the_border_with_zeros(dy, dx):
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(vit.shift(x, dy, dx), _shift_reference(x, dy, dx))


def test_the_shifted_patch_stem_embeds_layernormed_patches_of_the_image_and_its_shifts():
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, 8, 8, 3)).astype(np.float32)
    stem = vit.ShiftedPatchStem(width=16, patch_size=4)
    params = stem.init(jax.random.key(0), x)["params"]
    params["norm"] = {k: jax.random.normal(jax.random.key(i), v.shape)
                      for i, (k, v) in enumerate(params["norm"].items())}  # fmt: skip
    stacked = np.concatenate(
        [x] + [_shift_reference(x, dy, dx) for dy in (-2, 2) for dx in (-2, 2)], axis=-1
    )
    patches = np.stack([
        np.stack([stacked[:, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].reshape(2, -1)
                  for j in range(2)], axis=1)
        for i in range(2)
    ], axis=1).astype(np.float64)  # fmt: skip
    assert patches.shape == (2, 2, 2, 4 * 4 * 15)
    mean, var = patches.mean(-1, keepdims=True), patches.var(-1, keepdims=True)
    normed = (patches - mean) / np.sqrt(var + 1e-6) * params["norm"]["scale"] + params["norm"][
        "bias"
    ]
    expected = normed @ params["embedding"]["kernel"] + params["embedding"]["bias"]
    np.testing.assert_allclose(stem.apply({"params": params}, x), expected, rtol=1e-4, atol=1e-4)
    assert vit.layer_index("stem/norm/scale", depth=1) == 0


def test_locality_attention_keeps_tokens_off_themselves_and_its_temperature_gets_a_gradient():
    overrides = {"model.stem": "shifted_patch", "model.locality_attention": True}
    config = load_config("vit.py:smoke", **overrides, **{"data.num_classes": 7})
    config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    model = classify.make_model(config)
    images = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
    params = jax.jit(model.init)(jax.random.key(0), images)["params"]
    assert params["stem"]["embedding"]["kernel"].shape == (4 * 4 * 3 * 5, 32)
    # 0: the scale starts at its default, 1 / sqrt(head width).
    assert params["Transformer"]["encoderblock_1"]["attention_log_scale"] == 0.0
    _, state = jax.jit(lambda p: model.apply({"params": p}, images, sow_weights=True,
                                             mutable=["intermediates"]))(params)  # fmt: skip
    for block in range(2):
        (weights,) = state["intermediates"]["Transformer"][f"encoderblock_{block}"][
            "MultiHeadDotProductAttention_1"]["attention_weights"]  # fmt: skip
        assert weights.shape == (2, 2, 17, 17)
        np.testing.assert_array_equal(np.diagonal(weights, axis1=-2, axis2=-1), 0.0)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)

    def loss(p):
        return jnp.sum(model.apply({"params": p}, images) * jnp.arange(7.0))

    params["head"]["kernel"] = jax.random.normal(jax.random.key(2), (32, 7))  # zeros at init
    grads = jax.jit(jax.grad(loss))(params)["Transformer"]
    assert all(grads[f"encoderblock_{i}"]["attention_log_scale"] != 0 for i in range(2))


def test_attention_dropout_draws_a_mask_per_example():
    """As google-research's vision_transformer (broadcast_dropout=False): two copies of one
    example in a batch get different attention dropout (flax's default shares one mask)."""
    block = vit.Encoder1DBlock(num_heads=2, mlp_dim=16, attention_dropout=0.5)
    x = jnp.tile(jax.random.normal(jax.random.key(0), (1, 5, 8)), (2, 1, 1))
    variables = block.init(jax.random.key(1), x, train=False)
    out = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(out[0] - out[1])).max() > 1e-3
    np.testing.assert_array_equal(*block.apply(variables, x, train=False))


class _DropPath(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x, train):
        return vit.drop_path(self, x, self.rate, train)


def test_drop_path_zeroes_whole_examples_at_its_rate_and_rescales_the_rest():
    x = jnp.ones((4000, 3, 2))
    out = np.asarray(_DropPath(0.3).apply({}, x, True, rngs={"dropout": jax.random.key(0)}))
    per_example = out.reshape(len(out), -1)
    assert (per_example == per_example[:, :1]).all()  # One draw per example, not per element.
    dropped = per_example[:, 0] == 0
    assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / len(out))
    np.testing.assert_allclose(per_example[~dropped], 1 / 0.7, rtol=1e-6)  # Mean kept at 1.
    np.testing.assert_array_equal(_DropPath(0.3).apply({}, x, False), x)  # Identity in eval.


def test_a_tiny_vit_overfits_one_batch():
    settings = {"train.num_devices": 1, "optim.warmup_steps": 0, "optim.lr": 3e-3}
    config = load_config("vit.py:smoke", **settings, **{"train.total_steps": 150})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    step = train.make_train_step(built.task, mesh)
    batch = parallel.to_global_batch(next(iter(built.dataset)), mesh)
    losses = []
    for i in range(150):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["train/loss"]))
    assert float(metrics["train/accuracy"]) == 1.0
    # Label smoothing 0.1 over 7 classes floors the loss near 0.4; it starts at ln 7 = 1.95.
    assert losses[0] == pytest.approx(np.log(7), rel=0.02) and losses[-1] < 0.6


@pytest.mark.slow
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


def _vit(num_classes: int, **fields):
    return vit.ViT(num_classes=num_classes, patch_size=4, **vit.size_fields("", **fields))


def _augreg_npz(path, params, extra=()):
    """`params` saved as an AugReg checkpoint is: flat '/'-joined keys, plus `extra` names."""
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    flat.update({name: np.ones((2, 2), np.float32) for name in extra})
    np.savez(path, **flat)
    return flat


@pytest.mark.parametrize("grid", [4, 24])  # Down- and upsampling a 14x14 grid.
def test_position_embeddings_resample_as_timms_bicubic(grid):
    torch = pytest.importorskip("torch")
    timm_pos_embed = _import_timm().layers.pos_embed
    pos = np.random.default_rng(0).normal(size=(1, 1 + 14 * 14, 8)).astype(np.float32)
    ours = vit_pretrained.resample_pos_embedding(pos, (grid, grid), num_prefix=1)
    reference = timm_pos_embed.resample_abs_pos_embed(
        torch.from_numpy(pos), (grid, grid), num_prefix_tokens=1, antialias=False
    ).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    # jax.image.resize's cubic kernel (a = -0.5) is a different interpolation.
    patches = jnp.asarray(pos[0, 1:].reshape(14, 14, 8))
    theirs = jax.image.resize(patches, (grid, grid, 8), "cubic", antialias=False)
    assert np.abs(np.asarray(theirs).reshape(-1) - reference[0, 1:].reshape(-1)).max() > 1e-3


@pytest.mark.slow
def test_augreg_npz_loads_with_new_head_resampled_positions_and_a_report(tmp_path):
    fields = dict(width=16, depth=2, num_heads=2, mlp_dim=32)
    pretrained = jax.jit(_vit(10, **fields).init)(jax.random.key(1), jnp.zeros((1, 32, 32, 3)))
    pretrained = pretrained["params"]
    saved = _augreg_npz(tmp_path / "augreg.npz", pretrained, extra=["pre_logits/kernel"])
    fresh = jax.jit(_vit(7, **fields).init)(jax.random.key(2), jnp.zeros((1, 16, 16, 3)))["params"]

    params, report = vit_pretrained.load_into(
        fresh, vit_pretrained.read_npz(tmp_path / "augreg.npz")
    )
    flat = traverse_util.flatten_dict(params, sep="/")
    fresh_flat = traverse_util.flatten_dict(fresh, sep="/")
    assert report.reinitialized == ["head/bias", "head/kernel"]
    assert report.unused == ["pre_logits/kernel"] and report.missing == []
    assert report.resized == "(1, 65, 16) -> (1, 17, 16)"
    for key, value in flat.items():
        if key.startswith("head/"):
            np.testing.assert_array_equal(value, fresh_flat[key])
        elif key == vit_pretrained.POS_EMBEDDING:
            expected = vit_pretrained.resample_pos_embedding(saved[key], (4, 4), num_prefix=1)
            np.testing.assert_array_equal(value, expected)
        else:
            np.testing.assert_array_equal(value, saved[key])

    wider = _vit(7, width=32, depth=2, num_heads=2, mlp_dim=32)
    wider_params = jax.jit(wider.init)(jax.random.key(3), jnp.zeros((1, 16, 16, 3)))["params"]
    # The first mismatch in the tree's order (jit's is sorted); each width-16 leaf differs.
    mismatch = r"[\w/]+ has shape \(.*16,?\) in the file but \(.*32"
    with pytest.raises(ValueError, match=mismatch):
        vit_pretrained.load_into(wider_params, saved)


def test_init_from_npz_starts_training_from_the_file(tmp_path):
    config = load_config("vit.py:smoke", **{"train.num_devices": 1})
    model = _vit(10, width=16, depth=2, num_heads=2, mlp_dim=32)
    pretrained = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))["params"]
    saved = _augreg_npz(tmp_path / "augreg.npz", pretrained)
    config.model.init_from_npz = str(tmp_path / "augreg.npz")
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    flat = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    np.testing.assert_array_equal(flat["embedding/kernel"], saved["embedding/kernel"])
    np.testing.assert_array_equal(
        flat[vit_pretrained.POS_EMBEDDING], saved[vit_pretrained.POS_EMBEDDING]
    )
    assert flat["head/kernel"].shape == (16, 7)  # imbalanced digits: 7 classes, re-initialized
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    config.model.init_from_npz = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz.*no such file"):
        workdir.initial_state(workdir.build(config, mesh), jax.random.key(0), mesh)


def test_layer_decay_scales_each_depth_and_head_training_freezes_the_rest():
    base = load_config("vit.py:smoke").optim  # depth 2
    base.layer_decay = 0.5
    lr_scale = classify.make_lr_scale(base, depth=2)
    assert lr_scale("embedding/kernel") == lr_scale("cls") == 0.125
    assert lr_scale("Transformer/posembed_input/pos_embedding") == 0.125
    assert lr_scale("Transformer/encoderblock_0/LayerNorm_0/scale") == 0.25
    assert lr_scale("Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel") == 0.5
    assert lr_scale("Transformer/encoder_norm/bias") == lr_scale("head/kernel") == 1.0
    base.layer_decay, base.trainable = 1.0, "head"
    probe = classify.make_lr_scale(base, depth=2)
    assert probe("head/bias") == 1.0 and probe("Transformer/encoder_norm/bias") == 0.0
    base.trainable = "all"
    assert classify.make_lr_scale(base, depth=2) is None
    base.trainable = "backbone"
    with pytest.raises(ValueError, match="optim.trainable='backbone'; choose one of"):
        classify.make_lr_scale(base, depth=2)


@pytest.mark.slow
def test_a_linear_probe_trains_only_the_head():
    config = load_config("vit.py:smoke", **{"optim.trainable": "head", "train.num_devices": 1})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    before = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    step = train.make_train_step(built.task, mesh)
    batches = iter(built.dataset)
    for i in range(3):
        state, _ = step(state, parallel.to_global_batch(next(batches), mesh), jax.random.key(i))
    after = traverse_util.flatten_dict(jax.device_get(state.params), sep="/")
    for name, value in after.items():
        if name.startswith("head/"):
            assert np.abs(value - before[name]).max() > 0, name
        else:
            np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.mark.slow
def test_ham_augreg_settings_fine_tune_an_augreg_npz_on_digits_at_32(tmp_path):
    fields = dict(width=16, depth=2, num_heads=2, mlp_dim=32)
    pretrained = jax.jit(vit.ViT(num_classes=1000, patch_size=16, **fields).init)(
        jax.random.key(1), jnp.zeros((1, 224, 224, 3))
    )["params"]
    saved = _augreg_npz(tmp_path / "augreg.npz", pretrained)
    assert saved[vit_pretrained.POS_EMBEDDING].shape == (1, 1 + 14 * 14, 16)
    overrides = {f"model.{k}": v for k, v in fields.items()}
    settings = {
        "data.name": "digits",
        "data.image_size": 36,
        "data.augment": "flip_lr|random_crop(32)",
        "data.eval_preprocess": "center_crop(32)",
        "model.init_from_npz": str(tmp_path / "augreg.npz"),
        "train.total_steps": 4,
        "train.batch_size": 16,
        "train.log_every_steps": 2,
        "evals.val.every_steps": 4,
        "evals.attention.every_steps": -1,
        "optim.warmup_steps": 1,
        "train.num_devices": 1,
    }
    config = load_config("vit.py:ham_augreg", **overrides, **settings)
    assert config.optim.layer_decay == 0.75 and config.model.variant == "S"
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    start = traverse_util.flatten_dict(
        jax.device_get(workdir.initial_state(built, jax.random.key(0), mesh).params), sep="/"
    )
    expected = vit_pretrained.resample_pos_embedding(
        saved[vit_pretrained.POS_EMBEDDING], (2, 2), num_prefix=1
    )
    np.testing.assert_array_equal(start[vit_pretrained.POS_EMBEDDING], expected)
    state = train.train_and_evaluate(config, tmp_path / "run")
    assert int(state.step) == 4
    rows = [r for r in metric_writer.read_metrics(tmp_path / "run") if "test/accuracy" in r]
    assert rows and np.isfinite(rows[-1]["test/balanced_accuracy"])
