"""The GAN: spectral norm against an SVD, the projection discriminator by hand, losses and R1 in
closed form, DiffAugment, an 8-Gaussian toy, and the trainer's 1 = 8 devices and exact resume."""

import functools
import json
import shutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ham_synth import metric_writer, train, workdir
from ham_synth import state as state_lib
from ham_synth.models import gan_nets
from ham_synth.tasks import diffaugment, gan


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


class _Spectral(nn.Module):
    @nn.compact
    def __call__(self, x, update_stats):
        return gan_nets.spectral(nn.Dense(5, use_bias=False))(x, update_stats=update_stats)


def test_spectral_norm_estimates_the_largest_singular_value():
    model, x = _Spectral(), jnp.ones((2, 7))
    variables = model.init(jax.random.key(0), x, update_stats=False)
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
    apply = jax.jit(lambda v: model.apply(v, x, update_stats=True, mutable=["batch_stats"])[1])
    for _ in range(100):  # One power iteration per call.
        variables = {**variables, **apply(variables)}
    stats = variables["batch_stats"]["SpectralNorm_0"]
    sigma = float(stats["Dense_0/kernel/sigma"])
    np.testing.assert_allclose(sigma, np.linalg.svd(kernel)[1][0], rtol=1e-3)
    # The layer applies kernel / sigma, whose largest singular value is 1.
    eye = jnp.eye(7)
    normalized = np.asarray(model.apply(variables, eye, update_stats=False))
    np.testing.assert_allclose(np.linalg.svd(normalized)[1][0], 1.0, rtol=1e-3)


def _sn(weight, u):
    """One power iteration from u, as flax's SpectralNorm does: weight / sigma."""
    w = np.asarray(weight, np.float64).reshape(-1, weight.shape[-1])
    v = u @ w.T
    v /= np.linalg.norm(v)
    u = v @ w
    u /= np.linalg.norm(u)
    return np.asarray(weight, np.float64) / (v @ w @ u.T).item()


@pytest.mark.slow
def test_projection_discriminator_is_psi_of_phi_plus_the_class_projection():
    disc = gan_nets.Discriminator(num_classes=3, channels=(4,))
    images = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([0, 2])
    variables = disc.init(jax.random.key(0), images, labels)
    logits = np.asarray(disc.apply(variables, images, labels))
    phi = np.asarray(
        disc.apply(variables, images, update_stats=False, method=gan_nets.Discriminator.features),
        np.float64,
    )
    params, stats = variables["params"], variables["batch_stats"]
    psi = params["psi"]["layer_instance"]
    embed = params["embed"]["layer_instance"]["embedding"]
    u_psi = np.asarray(stats["psi"]["layer_instance/kernel/u"], np.float64)
    u_embed = np.asarray(stats["embed"]["layer_instance/embedding/u"], np.float64)
    w_psi, w_embed = _sn(psi["kernel"], u_psi), _sn(embed, u_embed)
    expected = phi @ w_psi[:, 0] + np.asarray(psi["bias"])[0] + np.sum(w_embed[[0, 2]] * phi, 1)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    other = np.asarray(disc.apply(variables, images, jnp.array([1, 0])))
    assert np.abs(other - logits).min() > 1e-4  # The label changes the output.


def test_losses_equal_their_closed_forms():
    d_real, d_fake = jnp.array([2.0, 0.5, -1.0]), jnp.array([-3.0, 0.0, 1.5])
    hinge_d = np.mean([0, 0.5, 2.0]) + np.mean([0, 1.0, 2.5])
    np.testing.assert_allclose(gan.d_loss_terms(d_real, d_fake, "hinge"), hinge_d, rtol=1e-6)
    np.testing.assert_allclose(gan.g_loss_term(d_fake, "hinge"), -np.mean([-3.0, 0.0, 1.5]))
    softplus = lambda x: np.log1p(np.exp(x))  # noqa: E731
    ns_d = np.mean(softplus(-np.array([2.0, 0.5, -1.0]))) + np.mean(
        softplus(np.array([-3.0, 0, 1.5]))
    )
    np.testing.assert_allclose(gan.d_loss_terms(d_real, d_fake, "nonsaturating"), ns_d, rtol=1e-6)
    np.testing.assert_allclose(
        gan.g_loss_term(d_fake, "nonsaturating"),
        np.mean(softplus(-np.array([-3.0, 0, 1.5]))),
        rtol=1e-6,
    )


def test_r1_equals_a_finite_difference_gradient_norm():
    w1 = jax.random.normal(jax.random.key(0), (12, 5))
    w2 = jax.random.normal(jax.random.key(1), (5,))

    def disc(x, labels):
        return jnp.tanh(x.reshape(len(x), -1) @ w1) @ w2 + 0.1 * labels

    x = np.asarray(jax.random.normal(jax.random.key(2), (3, 2, 2, 3)), np.float64)
    labels = jnp.array([0, 1, 2])
    penalty = float(jax.jit(gan.r1_penalty, static_argnums=0)(disc, jnp.asarray(x), labels))
    eps, norms = 1e-3, []
    f = lambda z: np.asarray(disc(jnp.asarray(z, jnp.float32), labels), np.float64)  # noqa: E731
    grads = np.zeros_like(x)
    for index in np.ndindex(*x.shape[1:]):
        step = np.zeros_like(x)
        step[(slice(None), *index)] = eps
        grads[(slice(None), *index)] = (f(x + step) - f(x - step)) / (2 * eps)
    norms = np.sum(grads**2, axis=(1, 2, 3))
    np.testing.assert_allclose(penalty, norms.mean(), rtol=1e-2)


def test_r1_is_taken_at_the_reals_through_the_augmentation():
    """D linear, w . x: through a cutout T, grad_x D(T(x)) = w * mask, so cut pixels add nothing
    (at T(x) the gradient would be w whatever T cut)."""
    w = jax.random.normal(jax.random.key(0), (8, 8, 3))

    def disc(x, labels):
        return jnp.sum(x * w, axis=(1, 2, 3)) + 0.0 * labels

    real, labels, rng = (
        jax.random.normal(jax.random.key(1), (4, 8, 8, 3)),
        jnp.zeros(4),
        jax.random.key(2),
    )
    mask = diffaugment.augment(jnp.ones_like(real), rng, 1.0, ("cutout",))  # Cutout multiplies.
    assert 0 < float(mask.mean()) < 1
    expected = jnp.mean(jnp.sum((w * mask) ** 2, axis=(1, 2, 3)))
    r1 = gan.augmented_r1(disc, real, labels, rng, 1.0, ("cutout",))
    np.testing.assert_allclose(r1, expected, rtol=1e-6)
    assert float(gan.r1_penalty(disc, real, labels)) == pytest.approx(float(jnp.sum(w**2)))
    # p = 0 leaves the images as they are: plain R1.
    plain = gan.augmented_r1(disc, real, labels, rng, 0.0, ("cutout",))
    np.testing.assert_allclose(plain, gan.r1_penalty(disc, real, labels), rtol=1e-6)


def test_diffaugment_is_differentiable_and_the_same_on_real_and_fake():
    rng = jax.random.key(3)
    real = jax.random.normal(jax.random.key(4), (4, 8, 8, 3))
    fake = jax.random.normal(jax.random.key(5), (4, 8, 8, 3))
    geometric = ("translation", "cutout")
    # Translation and cutout are linear maps chosen by the rng: the same rng, the same map.
    both = diffaugment.augment(real + fake, rng, 1.0, geometric)
    separate = diffaugment.augment(real, rng, 1.0, geometric) + diffaugment.augment(
        fake, rng, 1.0, geometric
    )
    np.testing.assert_allclose(both, separate, atol=1e-6)
    policy = diffaugment.parse_policy("translation,cutout,color")
    np.testing.assert_array_equal(
        diffaugment.augment(real, rng, 1.0, policy), diffaugment.augment(real, rng, 1.0, policy)
    )
    assert not np.allclose(diffaugment.augment(real, rng, 1.0, policy), real)
    np.testing.assert_array_equal(diffaugment.augment(real, rng, 0.0, policy), real)  # p = 0.

    # The gradient reaches the generator's output through every op.
    weights = jax.random.normal(jax.random.key(6), real.shape)
    grad = jax.grad(lambda x: jnp.sum(weights * diffaugment.augment(x, rng, 1.0, policy)))(fake)
    assert np.isfinite(grad).all() and np.abs(grad).sum() > 0
    with pytest.raises(ValueError, match="unknown ops \\['flip'\\]"):
        diffaugment.parse_policy("translation,flip")


def test_standing_stats_are_the_generators_own_batch_statistics():
    generator = gan_nets.Generator(num_classes=3, image_size=8, channels=(8, 4))
    variables = generator.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros(2, jnp.int32))
    stats = jax.jit(
        lambda v: gan.standing_stats(
            generator, v, num_batches=3, batch_size=6, num_classes=3, latent_dim=5
        )
    )(variables)
    # The first BatchNorm sees the projected latents: its statistics by hand, batch by batch.
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    batches = [
        np.asarray(jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), i), (6, 5))) @ kernel
        for i in range(3)
    ]
    features = [x.reshape(6, 4, 4, 8) for x in batches]
    first = stats["ConditionalBatchNorm_0"]["BatchNorm_0"]
    np.testing.assert_allclose(
        first["mean"], np.mean([x.mean((0, 1, 2)) for x in features], 0), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        first["var"], np.mean([x.var((0, 1, 2)) for x in features], 0), rtol=1e-4, atol=1e-6
    )


@functools.cache
def _smoke_state(num_classes=3, batch=4):
    """(config, task, initial state, labels) of a smoke GAN; built once, read-only."""
    config = load_config("gan.py:smoke", **{"data.num_classes": num_classes})
    task = gan.make_task(config)
    size = config.data.image_size
    labels = jnp.arange(batch, dtype=jnp.int32) % num_classes
    images = jnp.zeros((batch, size, size, 3))
    state = jax.jit(task.init)(jax.random.key(0), {"image": images, "label": labels})
    return config, task, state, labels


@functools.cache
def _smoke_sampler():
    """The smoke GAN's sample function, compiled once per batch_norm option."""
    return jax.jit(_smoke_state()[1].predict_fns["sample"], static_argnames="batch_norm")


def _samples_with_skewed_statistics(batch_norm: str, collection: str):
    """A smoke GAN's samples from its EMA variables, and from the same variables with the
    generator's statistics in `collection` moved far off (as early in training)."""
    _, _, state, labels = _smoke_state()
    sample = _smoke_sampler()
    variables = state_lib.eval_variables(state)
    skewed = jax.tree.map(lambda x: x + 3.0, variables[collection]["gen"])
    other = {**variables, collection: {**variables[collection], "gen": skewed}}
    return [np.asarray(sample(v, labels, jax.random.key(1), batch_norm=batch_norm))
            for v in (variables, other)]  # fmt: skip


@pytest.mark.slow
def test_each_batch_norm_option_samples_with_its_own_statistics():
    # Standing statistics: the weights alone count, whatever the kept statistics hold.
    for collection in ("batch_stats", "ema_batch_stats"):
        np.testing.assert_array_equal(*_samples_with_skewed_statistics("standing", collection))
    # The others read theirs, and only theirs.
    for batch_norm, reads, ignores in [("running", "batch_stats", "ema_batch_stats"),
                                       ("ema", "ema_batch_stats", "batch_stats")]:  # fmt: skip
        plain, skewed = _samples_with_skewed_statistics(batch_norm, reads)
        assert np.abs(plain - skewed).max() > 1e-2, batch_norm
        np.testing.assert_array_equal(*_samples_with_skewed_statistics(batch_norm, ignores))
    with pytest.raises(ValueError, match="sample.batch_norm='mean'; choose one of"):
        _samples_with_skewed_statistics("mean", "batch_stats")


def test_the_statistics_ema_follows_the_params_ema_warmed_up_decay():
    config, task, state, labels = _smoke_state(batch=16)
    size = config.data.image_size
    batch = {"image": jax.random.uniform(jax.random.key(2), (16, size, size, 3), minval=-1),
             "label": labels}  # fmt: skip
    after, _ = jax.jit(task.train_step)(state, batch, jax.random.key(3))
    decay = float(state_lib.ema_decay_at(config.optim.gen.ema_decay, 1))  # 2/11 at step 1.
    for old, new, averaged in zip(
        _leaves(state.model_state["ema_batch_stats"]["gen"]),
        _leaves(after.model_state["batch_stats"]["gen"]),
        _leaves(after.model_state["ema_batch_stats"]["gen"]),
        strict=True,
    ):
        np.testing.assert_allclose(averaged, decay * old + (1 - decay) * new, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("target", "p0"), [(2.0, 0.5), (2.0, 0.0), (1e-3, 0.5), (1e-3, 1.0)])
def test_ada_moves_p_by_the_batch_over_ada_kimg_towards_the_target(target, p0):
    """ADA (Karras et al. 2020): p += sign(r_t - target) * batch / (ada_kimg * 1000), in [0, 1],
    with r_t = E[sign D(real)] of the step. Target 2 lies above any r_t, so p must fall."""
    config = load_config("gan.py:smoke", **{"data.num_classes": 3, "gan.ada_target": target,
                                            "gan.ada_kimg": 1})  # fmt: skip
    task = gan.make_task(config)
    _, _, state, labels = _smoke_state(batch=16)
    state = state.replace(model_state={**state.model_state, "ada": {"p": jnp.float32(p0)}})
    size = config.data.image_size
    batch = {"image": jax.random.uniform(jax.random.key(2), (16, size, size, 3), minval=-1),
             "label": labels}  # fmt: skip
    after, metrics = jax.jit(task.train_step)(state, batch, jax.random.key(3))
    rt = float(metrics["train/rt"])
    expected = np.clip(p0 + np.sign(rt - target) * 16 / 1000, 0.0, 1.0)
    assert float(after.model_state["ada"]["p"]) == pytest.approx(expected, abs=1e-6)
    if target == 2.0:
        assert expected == pytest.approx(max(p0 - 0.016, 0.0))


class _MLPGen(nn.Module):
    dtype: Any = None  # make_gan_task samples with generator.clone(dtype=...).

    @nn.compact
    def __call__(self, z, labels, train=False):
        x = z
        for _ in range(3):
            x = nn.relu(nn.Dense(128)(x))
        return nn.Dense(2)(x)


class _MLPDisc(nn.Module):
    @nn.compact
    def __call__(self, x, labels, update_stats=False):
        for _ in range(3):
            x = nn.leaky_relu(nn.Dense(128)(x), 0.2)
        return nn.Dense(1)(x)[:, 0]


@pytest.mark.slow
def test_mlp_gan_covers_the_modes_of_eight_gaussians():
    std, steps, batch_size = 0.05, 1500, 256  # Passes at 4 of 4 data seeds; 1,000 at 2.
    angles = np.arange(8) * 2 * np.pi / 8
    modes = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    overrides = {
        "gan.loss": "nonsaturating",
        "gan.n_disc": 1,
        "gan.r1_gamma": 0.0,
        "gan.augment": "",
        "gan.ada_target": 0.0,
        "model.latent_dim": 8,
        "train.total_steps": steps,
        "data.num_classes": 1,
    }
    for group in ("gen", "disc"):
        overrides.update(
            {f"optim.{group}.{k}": v for k, v in dict(lr=1e-3, b1=0.5, b2=0.999).items()}
        )
    overrides["optim.gen.ema_decay"] = 0.99
    task = gan.make_gan_task(load_config("gan.py:smoke", **overrides), _MLPGen(), _MLPDisc())
    centres = jnp.asarray(modes, jnp.float32)

    def batch(key):
        mode_key, noise_key = jax.random.split(key)
        points = centres[jax.random.randint(mode_key, (batch_size,), 0, 8)]
        points += std * jax.random.normal(noise_key, (batch_size, 2))
        return {"image": points, "label": jnp.zeros(batch_size, jnp.int32)}

    def step(i, state):  # One compiled loop rather than 1,500 dispatches.
        data_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(3), i))
        return task.train_step(state, batch(data_key), step_key)[0]

    state = jax.jit(task.init)(jax.random.key(0), batch(jax.random.key(2)))
    state = jax.jit(lambda s: jax.lax.fori_loop(0, steps, step, s))(state)
    labels = jnp.zeros(2000, jnp.int32)
    samples = task.predict_fns["sample"](state_lib.eval_variables(state), labels, jax.random.key(1))
    distances = np.linalg.norm(np.asarray(samples)[:, None] - modes[None], axis=-1)
    covered = (distances < 3 * std).any(axis=0)
    assert covered.sum() >= 7, covered
    assert (distances.min(axis=1) < 3 * std).mean() > 0.5  # Most samples sit on a mode.


@pytest.mark.slow
def test_eight_devices_match_one_and_resume_is_bit_exact(tmp_path):
    # Conditional BatchNorm in G normalizes over the global batch under jit, so the mesh size
    # does not change the numbers.
    no_grid = {"evals.samples.every_steps": -1}  # Sampling is tested elsewhere; saves compiles.
    one = {"train.num_devices": 1, "train.total_steps": 3, **no_grid}
    eight = {"train.num_devices": 8, **no_grid}  # The smoke length, 6, checkpointed at 3 and 6.
    state_1 = train.train_and_evaluate(load_config("gan.py:smoke", **one), tmp_path / "1")
    full = train.train_and_evaluate(load_config("gan.py:smoke", **eight), tmp_path / "8")
    loss_1, loss_8 = (
        next(r for r in metric_writer.read_metrics(tmp_path / n) if r["step"] == 2)
        for n in ("1", "8")
    )
    for key in ("train/loss", "train/d_loss", "train/r1", "train/augment_p"):
        np.testing.assert_allclose(loss_8[key], loss_1[key], rtol=1e-4, atol=1e-6)
    # Weights and statistics agree at step 3; Adam's moments of near-zero gradients (~1e-5)
    # differ by summation order, so opt_state is left out.
    state_8 = workdir.load(tmp_path / "8", step="3").state
    for field in ("params", "ema_params", "model_state"):
        for a, b in zip(_leaves(getattr(state_1, field)), _leaves(getattr(state_8, field)),
                        strict=True):  # fmt: skip
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)

    # Killed after its step-3 checkpoint, the 8-device run resumes to what it was uninterrupted.
    shutil.copytree(tmp_path / "8", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "6")
    resumed = train.train_and_evaluate(load_config("gan.py:smoke", **eight), tmp_path / "resumed")
    history = (tmp_path / "resumed" / "config_history.jsonl").read_text().splitlines()
    assert json.loads(history[-1])["resumed_from_step"] == 3
    for a, b in zip(_leaves(full), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(b, a)
    assert set(resumed.model_state["batch_stats"]) == {"gen", "disc"}
