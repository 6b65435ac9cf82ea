"""Attention rollout against a hand-built 2-layer case, and the evaluator's per-class PNGs."""

import numpy as np
import pytest

from ham_synth.evaluators import attention


def _one_hot_rows(columns, tokens=3):
    """A [tokens, tokens] attention matrix whose row i attends only to token columns[i]."""
    return np.eye(tokens)[columns]


def test_rollout_of_a_hand_built_two_layer_case():
    # Layer 1: every token attends only to token 2. Layer 2: the class token (0) attends only to
    # token 1, the others to themselves. Two heads each, equal, so the head mean is the same.
    layer1 = _one_hot_rows([2, 2, 2])
    layer2 = _one_hot_rows([1, 1, 2])
    attentions = np.stack([np.stack([layer] * 2) for layer in (layer1, layer2)])[:, None]
    rollout = attention.attention_rollout(attentions)  # [1, 3, 3]
    # With the residual: A1' rows: 0 -> .5 e0 + .5 e2, 1 -> .5 e1 + .5 e2, 2 -> e2;
    # A2' row 0 -> .5 e0 + .5 e1. Row 0 of A2' A1' = .5 A1'[0] + .5 A1'[1] = (.25, .25, .5).
    np.testing.assert_allclose(rollout[0, 0], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(rollout[0].sum(axis=1), 1.0)
    # The class token's row over the two "patches" (tokens 1, 2), scaled to max 1; no grid to
    # reshape two patches into, so check the relevance itself.
    relevance = rollout[:, 0, 1:]
    np.testing.assert_allclose(relevance / relevance.max(), [[0.5, 1.0]])


def test_head_average_and_gap_pooling():
    heads = np.stack([_one_hot_rows([0, 1, 2, 3, 4], 5), _one_hot_rows([1, 1, 1, 1, 1], 5)])
    rollout = attention.attention_rollout(heads[None, None])  # one layer
    expected = 0.5 * (0.5 * heads[0] + 0.5 * heads[1]) + 0.5 * np.eye(5)
    np.testing.assert_allclose(rollout[0], expected)
    token = attention.patch_maps(rollout, "token")  # row 0 over tokens 1..4 -> a 2x2 grid
    np.testing.assert_allclose(token[0], np.array([[0.25, 0], [0, 0]]) / 0.25)
    # gap has no class token: the map is the mean row over the 4 patch tokens.
    gap_rollout = attention.attention_rollout(_one_hot_rows([3, 3, 3, 3], 4)[None, None, None])
    gap = attention.patch_maps(gap_rollout, "gap")
    # Mean row: 0.125 on each own token, plus 0.5 on token 3 -> (0.125, 0.125, 0.125, 0.625).
    np.testing.assert_allclose(gap[0], np.array([[0.2, 0.2], [0.2, 1.0]]))


def test_pick_examples_takes_correct_and_wrong_in_order():
    labels = np.array([1, 1, 0, 1, 1, 1])
    predictions = np.array([1, 0, 0, 1, 2, 1])
    assert attention.pick_examples(labels, predictions, 1, 2) == ([0, 3], [1, 4])


@pytest.mark.slow
def test_a_vit_run_draws_one_attention_grid_per_class(vit_run):
    pngs = sorted((vit_run / "evals" / "attention").glob("*_step_*.png"))
    assert len(pngs) == 7, pngs  # imbalanced digits: 7 classes
    assert all(p.stat().st_size > 2000 for p in pngs)
