"""Class-conditional DDPM task: ε- (or v-) prediction MSE with label dropout for classifier-free
guidance, and sampling with any sampler in diffusion/samplers.py."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ham_synth import config_lib, models, optim
from ham_synth.diffusion import samplers, schedule
from ham_synth.tasks import base


def make_alphas_cumprod(diffusion: ml_collections.ConfigDict) -> np.ndarray:
    betas = schedule.make_betas(
        diffusion.schedule, diffusion.num_train_steps, diffusion.beta_start, diffusion.beta_end
    )
    return schedule.alphas_cumprod(betas)


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    num_classes = base.num_classes(config)
    model = models.get_model(
        config.model.name,
        num_classes=num_classes,
        channels=config.model.channels,
        channel_mults=tuple(config.model.channel_mults),
        num_res_blocks=config.model.num_res_blocks,
        attention_resolutions=tuple(config.model.attention_resolutions),
        num_heads=config.model.num_heads,
        dropout=config.model.dropout,
        norm_groups=config.model.get("norm_groups", 8),  # Runs from before the knob: 8.
        dtype=config_lib.compute_dtype(config.train.compute_dtype),
    )
    optimizer = optim.make_optimizer(config.optim, config.train.total_steps)
    diffusion = config.diffusion
    if diffusion.prediction not in schedule.PREDICTIONS:
        raise ValueError(
            f"diffusion.prediction={diffusion.prediction!r}; choose one of {schedule.PREDICTIONS}."
        )
    alphas_cumprod = make_alphas_cumprod(diffusion)
    alphas_cumprod_f32 = jnp.asarray(alphas_cumprod, jnp.float32)

    def init_variables(rng, batch):
        t = jnp.zeros(batch["label"].shape, jnp.int32)
        return model.init(rng, batch["image"], t, batch["label"])

    def loss_fn(params, batch, rng, step):
        del step
        x0, labels = batch["image"], batch["label"]
        t_rng, noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 4)
        t = jax.random.randint(t_rng, labels.shape, 0, diffusion.num_train_steps)
        noise = jax.random.normal(noise_rng, x0.shape, x0.dtype)
        a = alphas_cumprod_f32[t]
        x_t = schedule.q_sample(x0, a, noise)
        # Label dropout trains the unconditional (null-class) model used by guidance.
        dropped = jax.random.bernoulli(drop_rng, diffusion.p_uncond, labels.shape)
        labels = jnp.where(dropped, num_classes, labels)
        pred = model.apply(
            {"params": params}, x_t, t, labels, train=True, rngs={"dropout": dropout_rng}
        )
        target = noise if diffusion.prediction == "eps" else schedule.v_target(x0, a, noise)
        return jnp.mean((pred - target) ** 2), {}

    defaults = config.sample

    def sample(
        variables,
        labels,
        rng,
        *,
        sampler: str = defaults.sampler,
        steps: int = defaults.steps,
        guidance: float = defaults.guidance,
        eta: float = defaults.eta,
        clip_denoised: bool = defaults.clip_denoised,
        compute_dtype: str = defaults.compute_dtype,
    ):
        """Denoises from pure noise; the settings default to config.sample."""
        dtype = config_lib.compute_dtype(compute_dtype, "sample.compute_dtype")
        model_fn = functools.partial(model.clone(dtype=dtype).apply, variables)
        return samplers.sample(
            samplers.guided(model_fn, guidance, null_label=num_classes),
            labels,
            rng,
            shape=(config.data.image_size, config.data.image_size, 3),
            alphas_cumprod=alphas_cumprod,
            prediction=diffusion.prediction,
            sampler=sampler,
            num_steps=steps,
            eta=eta,
            clip_denoised=clip_denoised,
        )

    return base.Task(
        init=base.make_init(init_variables, optimizer.tx),
        train_step=base.make_simple_step(loss_fn, optimizer, config.train.grad_accum_steps),
        predict_fns={base.SAMPLE: sample},
    )
