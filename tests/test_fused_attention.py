"""layers.fused_attention (jax.nn.dot_product_attention) against flax's own attention, which the
models used before: the same outputs, and the probabilities still sown when asked for."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ham_synth.models import layers


def _attention(attention_fn, dtype, **fields):
    return nn.MultiHeadDotProductAttention(num_heads=4, dtype=dtype, force_fp32_for_softmax=True,
                                           attention_fn=attention_fn, **fields)  # fmt: skip


def _outputs(dtype, tokens=49, **call):
    """(flax's, fused) outputs of one set of weights on one input: [2, tokens, 32]."""
    x = jax.random.normal(jax.random.key(0), (2, tokens, 32))
    plain = _attention(nn.dot_product_attention, dtype)
    variables = plain.init(jax.random.key(1), x)
    fused = _attention(layers.fused_attention, dtype)
    return plain.apply(variables, x, **call), fused.apply(variables, x, **call)


@pytest.mark.parametrize("tokens", [49, 196, 50])  # 7x7 and 14x14 patches; + a class token.
def test_float32_outputs_equal_flax_attention(tokens):
    plain, fused = _outputs(jnp.float32, tokens)
    assert fused.dtype == jnp.float32
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)


def test_bfloat16_outputs_agree_within_bfloat16_precision():
    plain, fused = _outputs(jnp.bfloat16)
    assert fused.dtype == jnp.bfloat16
    reference, _ = _outputs(jnp.float32)
    scale = float(jnp.abs(reference).max())
    # Both within bfloat16's resolution (8 bits of mantissa) of the float32 result.
    for out in (plain, fused):
        assert float(jnp.abs(out.astype(jnp.float32) - reference).max()) < 2e-2 * scale


def test_asking_for_the_weights_takes_the_path_that_sows_them():
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    fused = _attention(layers.fused_attention, jnp.float32)
    variables = fused.init(jax.random.key(1), x)
    out, state = fused.apply(variables, x, sow_weights=True, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out, fused.apply(variables, x), rtol=1e-5, atol=1e-6)


def test_attention_dropout_in_training_is_flaxs_own():
    x = jax.random.normal(jax.random.key(0), (2, 16, 32))
    make = functools.partial(_attention, dtype=jnp.float32, dropout_rate=0.5, deterministic=False)
    plain, fused = make(nn.dot_product_attention), make(layers.fused_attention)
    variables = plain.init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2)}
    np.testing.assert_array_equal(
        fused.apply(variables, x, rngs=rngs), plain.apply(variables, x, rngs=rngs)
    )


def _reference(query, key, value, scale, mask):
    """softmax(scale q.k, masked) v in float64 numpy: [B, T, H, D] in and out."""
    q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
    logits = scale * np.einsum("bqhd,bkhd->bhqk", q, k)
    logits = np.where(mask, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", weights, v)


class _Sower(nn.Module):
    """fused_attention asked for its weights, as MultiHeadDotProductAttention asks with
    sow_weights: flax's path, which materialises them."""

    @nn.compact
    def __call__(self, *args, **kwargs):
        return layers.fused_attention(*args, module=self, **kwargs)


@pytest.mark.parametrize("sow", [False, True])  # The fused path, and flax's (weights sown).
def test_a_scale_and_a_mask_give_the_masked_softmax_at_that_temperature(sow):
    query, key, value = jax.random.normal(jax.random.key(0), (3, 2, 9, 4, 8))
    mask = ~np.eye(9, dtype=bool)  # No token attends to itself: locality self-attention.

    def call(**kwargs):
        if not sow:
            return layers.fused_attention(query, key, value, mask=mask, **kwargs)
        out, _ = _Sower().apply({}, query, key, value, mask=mask, mutable=["intermediates"],
                                **kwargs)  # fmt: skip
        return out

    for scale in (0.7, jnp.float32(2.5)):
        np.testing.assert_allclose(
            call(scale=scale), _reference(query, key, value, float(scale), mask), rtol=1e-5,
            atol=1e-6,
        )  # fmt: skip
    # 1 / sqrt(head width) is the default temperature.
    np.testing.assert_allclose(call(scale=8**-0.5), call(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "backend, dtype, head_width, expected",
    [("gpu", jnp.bfloat16, 64, "cudnn"), ("gpu", jnp.float16, 32, "cudnn"),
     ("gpu", jnp.float32, 64, None), ("gpu", jnp.bfloat16, 12, None),
     ("gpu", jnp.bfloat16, 256, None), ("cpu", jnp.bfloat16, 64, None)],
)  # fmt: skip
def test_cudnn_is_chosen_on_a_gpu_for_half_precision_and_the_head_widths_it_takes(
    monkeypatch, backend, dtype, head_width, expected
):
    monkeypatch.delenv(layers.CUDNN_OPT_OUT, raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    query = jnp.zeros((2, 49, 4, head_width), dtype)
    assert layers.attention_implementation(query) == expected


def test_the_opt_out_keeps_cudnn_out_on_a_gpu(monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    query = jnp.zeros((2, 49, 4, 64), jnp.bfloat16)
    monkeypatch.setenv(layers.CUDNN_OPT_OUT, "0")
    assert layers.attention_implementation(query) is None
    monkeypatch.setenv(layers.CUDNN_OPT_OUT, "1")
    assert layers.attention_implementation(query) == "cudnn"


def test_when_cudnn_refuses_the_call_xlas_attention_gives_the_same_outputs(monkeypatch):
    # On this CPU, cuDNN refuses every call: the path a GPU takes for shapes cuDNN rejects.
    query, key, value = jax.random.normal(jax.random.key(0), (3, 2, 9, 4, 16), jnp.bfloat16)
    expected = layers.fused_attention(query, key, value)
    monkeypatch.delenv(layers.CUDNN_OPT_OUT, raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert layers.attention_implementation(query) == "cudnn"
    np.testing.assert_array_equal(layers.fused_attention(query, key, value), expected)
