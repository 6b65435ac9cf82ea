"""Class-conditional GAN task: `gan.n_disc` discriminator updates then one generator update per
train step, two optimizer groups (optim.gen, optim.disc), hinge or non-saturating loss, lazy R1
on reals, DiffAugment with an optional ADA-adapted probability, and an EMA generator.

State layout: params and opt_state are {"gen", "disc"}; ema_params is {"gen"}; model_state is
{"batch_stats": {"gen": BatchNorm statistics, "disc": spectral-norm vectors}, "ema_batch_stats":
{"gen": an EMA of the generator's BatchNorm statistics}, "ada": {"p"}}.

Sampling applies the EMA generator; its BatchNorm statistics are the sample setting `batch_norm`:
- "standing" (the default; BigGAN's "standing statistics"): the EMA generator's own, the mean
  over `gan.standing_stats_batches` class-balanced batches of its batch statistics, recomputed
  inside every sampling call from fixed noise, so they are a function of the weights alone;
- "ema": an EMA of the training generator's running statistics, with the EMA params' warmed-up
  decay, kept by every train step;
- "running": the training generator's running statistics (momentum 0.99, ~100 steps).
The last two describe the training generator, another network than the EMA's (its average spans
~1,000 steps); standing statistics cost a few forward passes per sampling call, which a GAN can
afford. The three, on one quickstart run at 600 steps: docs/results.md.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ham_synth import config_lib, models, optim
from ham_synth import state as state_lib
from ham_synth.tasks import base, diffaugment

LOSSES = ("hinge", "nonsaturating")
BATCH_NORM = ("standing", "ema", "running")  # Sampling's BatchNorm statistics (module docstring).


def d_loss_terms(d_real: jax.Array, d_fake: jax.Array, loss: str) -> jax.Array:
    """The discriminator's loss on real and fake logits."""
    if loss == "hinge":
        return jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
    return jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))


def g_loss_term(d_fake: jax.Array, loss: str) -> jax.Array:
    """The generator's loss on the logits of its samples."""
    if loss == "hinge":
        return -jnp.mean(d_fake)
    return jnp.mean(jax.nn.softplus(-d_fake))


def r1_penalty(disc_fn, images: jax.Array, labels: jax.Array) -> jax.Array:
    """E ||grad_x D(x, y)||^2 over the batch (Mescheder et al. 2018)."""
    grads = jax.grad(lambda x: jnp.sum(disc_fn(x, labels)))(images)
    return jnp.mean(jnp.sum(grads**2, axis=tuple(range(1, grads.ndim))))


def augmented_r1(disc_fn, real, labels, rng, p, policy) -> jax.Array:
    """R1 of D after the augmentation T at the real images x: E ||grad_x D(T(x), y)||^2, the
    gradient taken through T as StyleGAN2-ADA and DiffAugment do, so pixels T cuts out or shifts
    out carry none (the gradient at T(x) would weigh gamma by the augmentation)."""
    augmented = lambda x, y: disc_fn(diffaugment.augment(x, rng, p, policy), y)  # noqa: E731
    return r1_penalty(augmented, real, labels)


def generator_variables(variables: dict) -> dict:
    """The generator's flax variables out of a GAN state's eval_variables."""
    return {"params": variables["params"]["gen"], "batch_stats": variables["batch_stats"]["gen"]}


def standing_stats(generator, g_vars, *, num_batches, batch_size, num_classes, latent_dim):
    """BatchNorm statistics of the generator `g_vars` itself (BigGAN's standing statistics): the
    mean of its batch statistics in train mode over `num_batches` batches, classes in equal
    shares, z from a fixed key, so every sampling call of one set of weights agrees."""
    labels = jnp.arange(batch_size, dtype=jnp.int32) % num_classes
    this_batch = generator.clone(bn_momentum=0.0)  # Running statistics <- this batch's.

    def batch_stats(i):
        z = jax.random.normal(
            jax.random.fold_in(jax.random.PRNGKey(0), i), (batch_size, latent_dim)
        )
        _, updates = this_batch.apply(g_vars, z, labels, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    stacked = jax.lax.map(batch_stats, jnp.arange(num_batches))
    return jax.tree.map(lambda x: jnp.mean(x, axis=0), stacked)


def make_task(config: ml_collections.ConfigDict) -> base.Task:
    """The GAN of models/gan_nets.py, sized by config.model and config.data."""
    num_classes = base.num_classes(config)
    dtype = config_lib.compute_dtype(config.train.compute_dtype)
    generator = models.get_model(
        "generator",
        num_classes=num_classes,
        image_size=config.data.image_size,
        channels=tuple(config.model.gen_channels),
        bn_momentum=config.model.bn_momentum,
        dtype=dtype,
    )
    discriminator = models.get_model(
        "discriminator",
        num_classes=num_classes,
        channels=tuple(config.model.disc_channels),
        dtype=dtype,
    )
    return make_gan_task(config, generator, discriminator)


def make_gan_task(config, generator, discriminator) -> base.Task:
    """The task for any `generator(z, labels, train)` with a `dtype` field (the sampling dtype)
    and `discriminator(x, labels, update_stats)` pair (the toy test passes MLPs)."""
    gan = config.gan
    if gan.loss not in LOSSES:
        raise ValueError(f"gan.loss={gan.loss!r}; choose one of {LOSSES}.")
    if gan.n_disc < 1:
        raise ValueError(f"gan.n_disc={gan.n_disc}; the discriminator needs at least 1 update.")
    if config.train.grad_accum_steps != 1:
        raise ValueError(
            f"train.grad_accum_steps={config.train.grad_accum_steps}: the GAN does not accumulate "
            "gradients (its BatchNorm statistics are per batch); set it to 1 and lower "
            "train.batch_size instead."
        )
    if config.train.batch_size % gan.n_disc:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of gan.n_disc="
            f"{gan.n_disc}: each D update takes its own 1/n_disc of the step's real batch."
        )
    if gan.standing_stats_batches < 1:
        raise ValueError(
            f"gan.standing_stats_batches={gan.standing_stats_batches}; average over at least one "
            "batch (sample.batch_norm='running' samples with the training statistics)."
        )
    policy = diffaugment.parse_policy(gan.augment)
    optimizers = optim.make_optimizers(
        config.optim, config.train.total_steps, ("gen", "disc"), {"disc": gan.n_disc}
    )
    latent_dim = config.model.latent_dim

    def init(rng, batch):
        g_rng, d_rng = jax.random.split(rng)
        labels = batch["label"]
        z = jnp.zeros((labels.shape[0], latent_dim))
        g_vars = generator.init(g_rng, z, labels, train=False)
        d_vars = discriminator.init(d_rng, batch["image"], labels, update_stats=False)
        params = {"gen": g_vars["params"], "disc": d_vars["params"]}
        return state_lib.TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state={k: optimizers[k].tx.init(params[k]) for k in params},
            ema_params={"gen": params["gen"]},
            model_state={
                "batch_stats": {
                    "gen": g_vars.get("batch_stats", {}),
                    "disc": d_vars.get("batch_stats", {}),
                },
                "ema_batch_stats": {"gen": g_vars.get("batch_stats", {})},
                "ada": {"p": jnp.asarray(gan.augment_p, jnp.float32)},
            },
        )

    def generate(g_params, g_stats, labels, rng):
        """Samples in train mode (batch statistics); returns them and the updated statistics."""
        z = jax.random.normal(rng, (labels.shape[0], latent_dim))
        images, updates = generator.apply(
            {"params": g_params, "batch_stats": g_stats},
            z,
            labels,
            train=True,
            mutable=["batch_stats"],
        )
        return images, updates.get("batch_stats", g_stats)

    def discriminate(d_params, d_stats, images, labels, update_stats):
        """Logits and the spectral-norm vectors after this call."""
        logits, updates = discriminator.apply(
            {"params": d_params, "batch_stats": d_stats},
            images,
            labels,
            update_stats=update_stats,
            mutable=["batch_stats"],
        )
        return logits, updates.get("batch_stats", d_stats)

    def disc_step(disc, real, fake, labels, augment_rngs, p, do_r1):
        """One D update of `disc` = (params, opt_state, spectral-norm stats) on real and fake."""
        d_params, d_opt, d_stats = disc
        real_aug_rng, fake_aug_rng = augment_rngs
        real_aug = diffaugment.augment(real, real_aug_rng, p, policy)
        fake_aug = diffaugment.augment(fake, fake_aug_rng, p, policy)

        def loss_fn(d_params):
            # One pass over real and fake together: one power iteration per D update.
            logits, new_stats = discriminate(
                d_params,
                d_stats,
                jnp.concatenate([real_aug, fake_aug]),
                jnp.concatenate([labels, labels]),
                update_stats=True,
            )
            d_real, d_fake = jnp.split(logits, 2)
            r1 = jax.lax.cond(
                do_r1,
                lambda: augmented_r1(
                    lambda x, y: discriminate(d_params, new_stats, x, y, False)[0],
                    real,
                    labels,
                    real_aug_rng,
                    p,
                    policy,
                ),  # fmt: skip
                lambda: jnp.zeros((), jnp.float32),
            )
            # Lazy regularization: on one D update in r1_interval * n_disc, scaled by that.
            r1_weight = 0.5 * gan.r1_gamma * gan.r1_interval * gan.n_disc
            total = d_loss_terms(d_real, d_fake, gan.loss) + r1_weight * r1
            return total, (new_stats, d_real, d_fake, r1)

        (d_loss, (d_stats, d_real, d_fake, r1)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            d_params
        )
        d_params, d_opt = base.apply_update(d_params, d_opt, grads, optimizers["disc"].tx)
        metrics = {
            "d_loss": d_loss,
            "d_real": jnp.mean(d_real),
            "d_fake": jnp.mean(d_fake),
            "rt": jnp.mean(jnp.sign(d_real)),
            "r1": r1,
            "disc/grad_norm": optax.tree.norm(grads),
        }
        return (d_params, d_opt, d_stats), metrics

    def train_step(state, batch, rng):
        real, labels = batch["image"], batch["label"]
        stats, p = state.model_state["batch_stats"], state.model_state["ada"]["p"]
        d_rng, g_rng, g_aug_rng = jax.random.split(rng, 3)
        do_r1 = (gan.r1_gamma > 0) & (state.step % gan.r1_interval == 0)

        # --- Discriminator: n_disc updates, each on its own 1/n_disc of the real batch ---
        # (strided chunks, so each is spread over the devices of the batch-sharded mesh).
        chunks = base.split_microbatches({"image": real, "label": labels}, gan.n_disc)
        disc = (state.params["disc"], state.opt_state["disc"], stats["disc"])
        d_metrics = []
        for i in range(gan.n_disc):
            fake_rng, *augment_rngs = jax.random.split(jax.random.fold_in(d_rng, i), 3)
            chunk_labels = chunks["label"][i]
            # Fresh fakes from the current G; its BatchNorm statistics update only in the G step.
            fake, _ = generate(state.params["gen"], stats["gen"], chunk_labels, fake_rng)
            disc, m = disc_step(
                disc,
                chunks["image"][i],
                jax.lax.stop_gradient(fake),
                chunk_labels,
                augment_rngs,
                p,
                do_r1 & (i == 0),
            )
            d_metrics.append(m)
        d_params, d_opt, d_stats = disc
        d_mean = jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *d_metrics)

        # --- Generator: one update through the (frozen) new discriminator ---
        def g_loss_fn(g_params):
            fake, g_stats = generate(g_params, stats["gen"], labels, g_rng)
            fake_aug = diffaugment.augment(fake, g_aug_rng, p, policy)
            d_fake, _ = discriminate(d_params, d_stats, fake_aug, labels, update_stats=False)
            return g_loss_term(d_fake, gan.loss), g_stats

        (g_loss, g_stats), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
            state.params["gen"]
        )
        g_params, g_opt = base.apply_update(
            state.params["gen"], state.opt_state["gen"], g_grads, optimizers["gen"].tx
        )

        # --- ADA: p follows the sign of D on reals towards the target r_t ---
        if gan.ada_target > 0:
            adjust = real.shape[0] / (gan.ada_kimg * 1000.0)
            p = jnp.clip(p + jnp.sign(d_mean["rt"] - gan.ada_target) * adjust, 0.0, 1.0)

        def ema(average, value):  # The EMA params' warmed-up decay at this update.
            return state_lib.ema_update(average, value, optimizers["gen"].ema_decay, state.step + 1)

        ema_stats = ema(state.model_state["ema_batch_stats"]["gen"], g_stats)
        new_state = state.replace(
            step=state.step + 1,
            params={"gen": g_params, "disc": d_params},
            opt_state={"gen": g_opt, "disc": d_opt},
            ema_params={"gen": ema(state.ema_params["gen"], g_params)},
            model_state={
                "batch_stats": {"gen": g_stats, "disc": d_stats},
                "ema_batch_stats": {"gen": ema_stats},
                "ada": {"p": p},
            },
        )
        metrics = {
            "train/loss": g_loss,  # The generator's, so generic tools have one key.
            "train/g_loss": g_loss,
            "train/d_loss": d_mean["d_loss"],
            "train/d_real": d_mean["d_real"],
            "train/d_fake": d_mean["d_fake"],
            "train/rt": d_mean["rt"],
            # r1 x interval on the steps that compute it, 0 elsewhere: its mean over a log window
            # that is a multiple of r1_interval is the mean R1 of the steps that computed it.
            "train/r1": d_metrics[0]["r1"] * gan.r1_interval,  # r1 is 0 where not computed.
            "train/augment_p": p,
            "train/gen/lr": optimizers["gen"].schedule(state.step),
            "train/disc/lr": optimizers["disc"].schedule(state.step),
            "train/gen/grad_norm": optax.tree.norm(g_grads),
            "train/disc/grad_norm": d_mean["disc/grad_norm"],
        }
        return new_state, metrics

    def sample(
        variables,
        labels,
        rng,
        *,
        truncation: float = config.sample.truncation,
        batch_norm: str = config.sample.batch_norm,
        compute_dtype: str = config.sample.compute_dtype,
    ):
        """The EMA generator on z ~ N(0, I), or a normal truncated to [-truncation, truncation]
        when truncation > 0, with the BatchNorm statistics `batch_norm` names (BATCH_NORM)."""
        if batch_norm not in BATCH_NORM:
            raise ValueError(f"sample.batch_norm={batch_norm!r}; choose one of {BATCH_NORM}.")
        shape = (labels.shape[0], latent_dim)
        if truncation > 0:
            z = jax.random.truncated_normal(rng, -truncation, truncation, shape)
        else:
            z = jax.random.normal(rng, shape)
        dtype = config_lib.compute_dtype(compute_dtype, "sample.compute_dtype")
        sampler = generator.clone(dtype=dtype)
        g_vars = generator_variables(variables)
        if batch_norm == "ema":
            g_vars["batch_stats"] = variables["ema_batch_stats"]["gen"]
        elif batch_norm == "standing" and g_vars["batch_stats"]:
            g_vars["batch_stats"] = standing_stats(
                sampler,
                g_vars,
                num_batches=gan.standing_stats_batches,
                batch_size=config.train.batch_size,
                num_classes=base.num_classes(config),
                latent_dim=latent_dim,
            )
        return sampler.apply(g_vars, z, labels, train=False)

    return base.Task(init=init, train_step=train_step, predict_fns={base.SAMPLE: sample})
