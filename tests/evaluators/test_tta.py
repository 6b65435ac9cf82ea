"""Test-time augmentation: the views are the square's symmetries, the identity alone is plain
evaluation, and a model invariant to a group of views gains nothing from averaging over it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ham_synth import parallel, workdir
from ham_synth.evaluators import classification, tta


def test_the_d4_views_are_the_eight_symmetries_of_the_square():
    image = np.arange(50, dtype=np.float32).reshape(1, 5, 5, 2)
    expected = [np.rot90(m, k, axes=(1, 2)) for m in (image, image[:, :, ::-1]) for k in range(4)]
    views = [np.asarray(tta.VIEWS[name](jnp.asarray(image))) for name in tta.parse_views("d4")]
    assert len(views) == 8
    for view in views:  # Each is one of numpy's eight, and no two coincide.
        assert sum(np.array_equal(view, e) for e in expected) == 1
    assert len({v.tobytes() for v in views}) == 8
    assert tta.parse_views("none") == ()
    assert tta.parse_views("identity|flip_lr") == ("identity", "flip_lr")
    with pytest.raises(ValueError, match="tta='flip'.*flips"):
        tta.parse_views("flip")


def _flip_invariant_logits(images):
    """A random linear classifier summed over {identity, flip_lr, flip_ud, rot180}: invariant to
    those four views by construction, not to a 90-degree rotation."""
    weights = jax.random.normal(jax.random.key(0), (images[0].size, 3))
    views = [tta.VIEWS[name](images) for name in tta.PRESETS["flips"]]
    return sum(v.reshape(len(images), -1) @ weights for v in views) / 10.0


def test_tta_over_flips_leaves_a_flip_invariant_model_unchanged():
    images = jax.random.normal(jax.random.key(1), (6, 7, 7, 3))
    plain = jax.nn.softmax(_flip_invariant_logits(images))
    flips = jax.nn.softmax(tta.averaged(_flip_invariant_logits, tta.PRESETS["flips"])(images))
    d4 = jax.nn.softmax(tta.averaged(_flip_invariant_logits, tta.PRESETS["d4"])(images))
    np.testing.assert_allclose(flips, plain, atol=1e-6)
    assert np.abs(np.asarray(d4 - plain)).max() > 1e-3  # Rotations by 90 degrees do change it.


def test_tta_averages_the_views_probabilities_not_their_logits():
    """The mean of the softmax over the views (the issue's definition), returned as its log; for
    a model that no view leaves unchanged, the mean of the logits would differ."""
    weights = jax.random.normal(jax.random.key(0), (7 * 7 * 3, 4))

    def logits_fn(images):
        return 3.0 * images.reshape(len(images), -1) @ weights

    images = jax.random.normal(jax.random.key(1), (5, 7, 7, 3))
    views = tta.PRESETS["d4"]
    probs = [jax.nn.softmax(logits_fn(tta.VIEWS[name](images))) for name in views]
    expected = np.log(np.mean(np.asarray(probs), axis=0))
    np.testing.assert_allclose(tta.averaged(logits_fn, views)(images), expected, atol=1e-5)
    logit_mean = jax.nn.log_softmax(np.mean([logits_fn(tta.VIEWS[n](images)) for n in views], 0))
    assert np.abs(np.asarray(logit_mean) - expected).max() > 1e-2


@pytest.mark.slow
def test_identity_tta_equals_plain_evaluation(tmp_path):
    config = load_config("vit.py:smoke", **{"train.num_devices": 1})
    mesh = parallel.make_mesh(1)
    built = workdir.build(config, mesh)
    state = workdir.initial_state(built, jax.random.key(0), mesh)
    # The head starts at zero (uniform probabilities): perturb every weight so classes differ.
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys, strict=True)])  # fmt: skip
    state = state.replace(params=params, ema_params=params)

    def evaluate(views):
        evaluator = classification.ClassificationEvaluator(
            name="val", config=built.config, task=built.task, mesh=mesh, workdir=tmp_path,
            split="val", tta=views,
        )  # fmt: skip
        return evaluator.probabilities(state), evaluator.run(state, 0).scalars

    plain_probs, plain = evaluate("none")
    identity_probs, identity = evaluate("identity")
    d4_probs, _ = evaluate("d4")
    assert plain_probs.std(axis=1).mean() > 0.01
    np.testing.assert_allclose(identity_probs, plain_probs, atol=1e-6)
    assert identity == pytest.approx(plain, abs=1e-6)
    assert np.abs(d4_probs - plain_probs).max() > 1e-3
