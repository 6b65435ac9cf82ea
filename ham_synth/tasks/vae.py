"""Conditional VAE task: loss = reconstruction + beta(step) * KL, and prior sampling."""

import jax
import jax.numpy as jnp
import ml_collections

from ham_synth import config_lib, models, optim
from ham_synth.tasks import base


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) per example, summed over latent dims."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def kl_weight(step: jax.Array, beta: float, warmup_steps: int) -> jax.Array:
    """beta, ramped up linearly from 0 over `warmup_steps` (against posterior collapse)."""
    if warmup_steps <= 0:
        return jnp.asarray(beta, jnp.float32)
    return beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    model = models.get_model(
        config.model.name,
        num_classes=base.num_classes(config),
        image_size=config.data.image_size,
        channels=tuple(config.model.channels),
        latent_dim=config.model.latent_dim,
        class_embed_dim=config.model.class_embed_dim,
        dtype=config_lib.compute_dtype(config.train.compute_dtype),
    )
    optimizer = optim.make_optimizer(config.optim, config.train.total_steps)

    def init_variables(rng, batch):
        params_rng, latent_rng = jax.random.split(rng)
        rngs = {"params": params_rng, "latent": latent_rng}
        return model.init(rngs, batch["image"], batch["label"])

    def loss_fn(params, batch, rng, step):
        recon, mean, logvar = model.apply(
            {"params": params}, batch["image"], batch["label"], rngs={"latent": rng}
        )
        # Squared error summed over pixels: a Gaussian log-likelihood up to scale and constants.
        reconstruction = jnp.mean(jnp.sum((recon - batch["image"]) ** 2, axis=(1, 2, 3)))
        kl = jnp.mean(gaussian_kl(mean, logvar))
        beta = kl_weight(step, config.loss.beta, config.loss.kl_warmup_steps)
        loss = reconstruction + beta * kl
        return loss, {"reconstruction": reconstruction, "kl": kl, "beta": beta}

    def sample(variables, labels, rng, *, compute_dtype: str = config.sample.compute_dtype):
        """Decodes draws from the prior N(0, I)."""
        z = jax.random.normal(rng, (labels.shape[0], config.model.latent_dim))
        decoder = model.clone(dtype=config_lib.compute_dtype(compute_dtype, "sample.compute_dtype"))
        return decoder.apply(variables, z, labels, method=decoder.decode)

    return base.Task(
        init=base.make_init(init_variables, optimizer.tx),
        train_step=base.make_simple_step(loss_fn, optimizer, config.train.grad_accum_steps),
        predict_fns={base.SAMPLE: sample},
    )
