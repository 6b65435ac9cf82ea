"""train.compute_dtype: bfloat16 training of every family's smoke config stays close to float32
over its first steps, and float32 is the models' default (dtype=None) path exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ham_synth import models, parallel, train, workdir
from ham_synth.models import vit

FAMILIES = ("vae.py:smoke", "ddpm.py:smoke", "gan.py:smoke", "vit.py:smoke")
STEPS = 2


def train_steps(spec: str, compute_dtype: str):
    """(initial params, params after STEPS steps, losses) on one device, same data and rngs."""
    config = load_config(spec, **{"train.compute_dtype": compute_dtype, "train.num_devices": 1})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    initial = jax.tree.map(np.asarray, state.params)
    step = train.make_train_step(built.task, mesh)
    batches = iter(built.dataset)
    losses = []
    for i in range(STEPS):
        batch = parallel.to_global_batch(next(batches), mesh)
        state, metrics = step(state, batch, jax.random.key(i))
        losses.append(float(metrics["train/loss"]))
    return initial, jax.tree.map(np.asarray, state.params), np.asarray(losses)


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.slow
@pytest.mark.parametrize("spec", FAMILIES)
def test_bfloat16_training_stays_close_to_float32(spec):
    initial, fp32, fp32_losses = train_steps(spec, "float32")
    initial_bf16, bf16, bf16_losses = train_steps(spec, "bfloat16")
    # Params and optimizer state stay float32; only the activations change precision.
    assert {x.dtype for x in jax.tree.leaves(bf16)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(flat(initial), flat(initial_bf16))
    np.testing.assert_allclose(bf16_losses, fp32_losses, rtol=0.03, atol=1e-3)
    # ... and bfloat16 did run: a compute dtype left unread would give float32's bits.
    assert np.abs(flat(bf16) - flat(fp32)).max() > 0
    # The updates point the same way: cosine of the two parameter moves.
    move_fp32, move_bf16 = flat(fp32) - flat(initial), flat(bf16) - flat(initial)
    cosine = move_fp32 @ move_bf16 / (np.linalg.norm(move_fp32) * np.linalg.norm(move_bf16))
    assert cosine > 0.95, cosine


# name -> (fields, the inputs it is applied to given images x and labels y)
MODELS = {
    "unet": (
        dict(num_classes=3, channels=8, channel_mults=(1, 2), num_res_blocks=1,
             attention_resolutions=(), num_heads=2),  # the bottleneck always has attention
        lambda x, y: (x, jnp.arange(2), y),
    ),
    "vae": (dict(num_classes=3, image_size=8, channels=(8, 16), latent_dim=4), lambda x, y: (x, y)),
    "generator": (dict(num_classes=3, image_size=8, channels=(16, 8)), lambda x, y: (x[:, 0, 0], y)),  # noqa: E501
    "discriminator": (dict(num_classes=3, channels=(8, 16)), lambda x, y: (x, y)),
    "vit": (
        dict(num_classes=3, patch_size=4,
             **vit.size_fields("", width=16, depth=2, num_heads=2, mlp_dim=32)),
        lambda x, y: (x,),
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_float32_compute_dtype_is_the_default_path_bit_for_bit(name):
    fields, make_inputs = MODELS[name]
    inputs = make_inputs(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)), jnp.array([0, 2]))
    rngs = {"params": jax.random.key(0), "latent": jax.random.key(1)}
    default = models.get_model(name, **fields)  # dtype=None: what every model did before
    variables = jax.jit(default.init)(rngs, *inputs)

    def apply(model):
        fn = jax.jit(lambda v, *x: model.apply(v, *x, rngs={"latent": rngs["latent"]}))
        return jax.tree.leaves(fn(variables, *inputs))

    for a, b in zip(apply(default), apply(default.clone(dtype=jnp.float32)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert all(leaf.dtype == jnp.float32 for leaf in apply(default.clone(dtype=jnp.bfloat16)))
