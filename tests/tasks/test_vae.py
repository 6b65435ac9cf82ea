"""The conditional VAE: KL closed forms, the KL warm-up, overfitting one batch, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ham_synth import optim
from ham_synth.data import pipeline
from ham_synth.models import layers, vae_nets
from ham_synth.tasks import vae


def test_kl_is_zero_for_the_prior_and_matches_the_closed_form():
    zeros = jnp.zeros((3, 5))
    np.testing.assert_array_equal(vae.gaussian_kl(zeros, zeros), np.zeros(3))
    # KL(N(m, s^2) || N(0, 1)) = (s^2 + m^2 - 1 - log s^2) / 2 per dimension.
    mean, logvar = jnp.full((1, 4), 2.0), jnp.full((1, 4), np.log(0.5))
    expected = 4 * 0.5 * (0.5 + 4.0 - 1.0 - np.log(0.5))
    np.testing.assert_allclose(vae.gaussian_kl(mean, logvar), [expected], rtol=1e-6)


def test_kl_weight_ramps_linearly_to_beta():
    weights = [float(vae.kl_weight(jnp.asarray(s), 2.0, 4)) for s in (0, 1, 2, 4, 100)]
    assert weights == [0.0, 0.5, 1.0, 2.0, 2.0]
    assert float(vae.kl_weight(jnp.asarray(0), 2.0, 0)) == 2.0


def _task_and_batch(**overrides):
    config = load_config("vae.py:smoke", **overrides)
    dataset, config = pipeline.make_train_dataset(config)
    batch = {k: jnp.asarray(v) for k, v in next(iter(dataset)).items()}
    return config, vae.make_task(config), batch


@pytest.mark.slow
def test_loss_falls_when_overfitting_one_batch():
    config, task, batch = _task_and_batch(**{"train.total_steps": 150, "optim.warmup_steps": 5})
    state = jax.jit(task.init)(jax.random.key(0), batch)
    step = jax.jit(task.train_step)
    losses = []
    for i in range(150):
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["train/loss"]))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.4 * losses[0], (losses[0], losses[-1])
    assert set(metrics) >= {"train/loss", "train/reconstruction", "train/kl", "train/grad_norm"}
    # The loss is reconstruction + beta(step) KL, beta from the warmup at the step it ran.
    beta = float(vae.kl_weight(jnp.asarray(149), config.loss.beta, config.loss.kl_warmup_steps))
    assert float(metrics["train/beta"]) == pytest.approx(beta)
    expected = float(metrics["train/reconstruction"]) + beta * float(metrics["train/kl"])
    assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)
    # The step reports the lr it applied: the warmup's, then the cosine's.
    np.testing.assert_allclose(
        float(metrics["train/lr"]), float(optim.make_schedule(config.optim, 150)(149)), rtol=1e-6
    )


def test_samples_have_the_image_shape_and_depend_on_the_label():
    config, task, batch = _task_and_batch()
    state = jax.jit(task.init)(jax.random.key(0), batch)
    rng = jax.random.key(1)
    labels = jnp.zeros(4, jnp.int32)
    sample = task.predict_fns["sample"]
    variables = {"params": state.params}
    images = sample(variables, labels, rng)
    size = config.data.image_size
    assert images.shape == (4, size, size, 3)
    assert float(jnp.abs(images).max()) <= 1.0
    # Same latent draws, other class: the decoder's output must change, by more than 10% of
    # its (still small, at init) magnitude.
    other = sample(variables, labels + 7, rng)
    assert float(jnp.abs(images - other).mean()) > 0.1 * float(jnp.abs(images).mean()) > 0
    # And the same rng and labels reproduce the samples exactly.
    np.testing.assert_array_equal(sample(variables, labels, rng), images)


def test_a_task_refuses_an_unresolved_class_count():
    config = load_config("vae.py:smoke")
    assert config.data.num_classes == 0  # Filled in by make_train_dataset.
    with pytest.raises(ValueError, match="data.num_classes=0: build the task from the config"):
        vae.make_task(config)


def test_decoder_upsamples_as_nearest_neighbour_resize_then_conv():
    """Each decoder level is a 2x nearest upsampling (jax.image.resize's) and a 3x3 conv: no
    transposed convs, whose weight gradients were 70% of the VAE step on XLA:CPU."""
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    expected = jax.image.resize(x, (2, 10, 14, 3), method="nearest")
    np.testing.assert_array_equal(layers.upsample_nearest(x), expected)

    model = vae_nets.Decoder(channels=(8, 16), image_size=16)
    z, embedding = jnp.ones((2, 4)), jnp.ones((2, 3))
    params = model.init(jax.random.key(0), z, embedding)["params"]
    kernels = [p["kernel"].shape for p in params.values() if "kernel" in p]
    assert kernels == [(7, 16 * 4 * 4), (3, 3, 16, 16), (3, 3, 16, 16), (3, 3, 16, 8),
                       (3, 3, 8, 8), (3, 3, 8, 3)]  # fmt: skip
    assert model.apply({"params": params}, z, embedding).shape == (2, 16, 16, 3)
