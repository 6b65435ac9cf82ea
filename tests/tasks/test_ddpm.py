"""The DDPM task and its UNet: shapes, the loss of a zero predictor, overfitting, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ham_synth import config_lib, models
from ham_synth.data import pipeline
from ham_synth.diffusion import samplers
from ham_synth.tasks import ddpm


def _setup(**overrides):
    config = load_config("ddpm.py:smoke", **overrides)
    dataset, config = pipeline.make_train_dataset(config)
    batch = {k: jnp.asarray(v) for k, v in next(iter(dataset)).items()}
    task = ddpm.make_task(config)
    return config, task, batch, jax.jit(task.init)(jax.random.key(0), batch)


@pytest.mark.slow
def test_unet_keeps_the_image_shape_and_scales_to_the_ham64_recipe():
    model = models.get_model(
        "unet",
        num_classes=7,
        channels=8,
        channel_mults=(1, 2),
        attention_resolutions=(4,),
        num_heads=2,
    )
    x = jnp.zeros((2, 8, 8, 3))
    t, labels = jnp.array([0, 999]), jnp.array([0, 7])  # 7 is the null class.
    params = jax.jit(model.init)(jax.random.key(0), x, t, labels)
    assert jax.jit(model.apply)(params, x, t, labels).shape == (2, 8, 8, 3)

    config = load_config("ddpm.py:ham64")
    big = models.get_model(
        "unet",
        num_classes=7,
        channels=config.model.channels,
        channel_mults=config.model.channel_mults,
        num_res_blocks=config.model.num_res_blocks,
        attention_resolutions=config.model.attention_resolutions,
    )
    shapes = jax.eval_shape(
        big.init,
        jax.random.key(0),
        jnp.zeros((1, 64, 64, 3)),
        jnp.zeros((1,), jnp.int32),
        jnp.zeros((1,), jnp.int32),
    )
    assert 30e6 < sum(x.size for x in jax.tree.leaves(shapes)) < 45e6


def test_norm_groups_sets_every_groupnorm_and_must_divide_the_widths():
    """model.norm_groups: the same parameters normalize over other groups (other outputs); a
    width it does not divide is refused by name."""
    fields = dict(num_classes=3, channels=16, channel_mults=(1, 2), attention_resolutions=(4,),
                  num_heads=2)  # fmt: skip
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    t, labels = jnp.array([3, 900]), jnp.array([0, 2])
    params = models.get_model("unet", **fields).init(jax.random.key(0), x, t, labels)
    noise = jax.random.key(2)  # The output conv starts at zero: perturb so outputs differ.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(noise, p.shape), params)
    outputs = [models.get_model("unet", **fields, norm_groups=g).apply(params, x, t, labels)
               for g in (8, 16)]  # fmt: skip
    assert np.abs(np.asarray(outputs[0] - outputs[1])).max() > 1e-3
    with pytest.raises(ValueError, match=r"model.norm_groups=8 does not divide the width 12"):
        models.get_model("unet", **{**fields, "channels": 12}).init(jax.random.key(0), x, t, labels)


def test_zero_predictor_has_eps_loss_one():
    # The UNet's output conv starts at zero, so at init it predicts ε = 0 and the MSE is E[ε²].
    _, task, batch, state = _setup(**{"diffusion.prediction": "eps", "train.batch_size": 64})
    _, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(1))
    np.testing.assert_allclose(float(metrics["train/loss"]), 1.0, atol=0.05)


def test_label_dropout_trains_the_null_class_that_guidance_samples_with(monkeypatch):
    """diffusion.p_uncond=1 replaces every label by the null class num_classes: the loss no
    longer depends on the labels and equals the loss of labels all num_classes; sampling asks
    the guided model for that same null class."""
    config, task, batch, state = _setup(**{"diffusion.p_uncond": 0.0})
    noise = jax.random.key(5)  # The output conv starts at zero: perturb so labels matter.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(noise, p.shape), state.params)
    state = state.replace(params=params)
    num_classes = config.data.num_classes

    def loss(task, labels):
        step = jax.jit(task.train_step)
        return float(step(state, {**batch, "label": labels}, jax.random.key(1))[1]["train/loss"])

    labels = batch["label"]
    dropped = ddpm.make_task(config_lib.with_values(config, {"diffusion.p_uncond": 1.0}))
    null = jnp.full_like(labels, num_classes)
    assert loss(dropped, labels) == pytest.approx(loss(dropped, (labels + 1) % num_classes))
    assert loss(dropped, labels) == pytest.approx(loss(task, null), rel=1e-6)
    assert abs(loss(task, labels) - loss(task, null)) > 1e-4  # Labels matter without dropout.

    seen = []
    guided = samplers.guided
    monkeypatch.setattr(samplers, "guided", lambda fn, w, null_label: seen.append(null_label)
                        or guided(fn, w, null_label=null_label))  # fmt: skip
    task.predict_fns["sample"]({"params": params}, labels[:2], jax.random.key(0), steps=2)
    assert seen == [num_classes]


@pytest.mark.slow
def test_tiny_unet_overfits_one_batch_and_then_depends_on_the_label():
    config, task, batch, state = _setup(**{"train.total_steps": 80, "optim.lr": 3e-3})
    step = jax.jit(task.train_step)
    rng = jax.random.key(3)  # One rng: the same t and noise each step, a fixed target.
    losses = []
    for _ in range(80):
        state, metrics = step(state, batch, rng)
        losses.append(float(metrics["train/loss"]))
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])

    sample = jax.jit(task.predict_fns["sample"], static_argnames=("steps", "guidance"))
    variables = {"params": state.params}
    labels = jnp.zeros(4, jnp.int32)
    images = sample(variables, labels, jax.random.key(0))
    size = config.data.image_size
    assert images.shape == (4, size, size, 3) and float(jnp.abs(images).max()) <= 1.0
    np.testing.assert_array_equal(sample(variables, labels, jax.random.key(0)), images)
    other = sample(variables, labels + 1, jax.random.key(0))
    assert float(jnp.abs(other - images).mean()) > 1e-3
    # The defaults are config.sample's; a setting passed in changes the samples.
    assert config.sample.steps == 5
    np.testing.assert_array_equal(sample(variables, labels, jax.random.key(0), steps=5), images)
    fewer = sample(variables, labels, jax.random.key(0), steps=2)
    assert float(jnp.abs(fewer - images).mean()) > 1e-4
