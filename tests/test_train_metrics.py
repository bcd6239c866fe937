"""Offline metrics against scikit-learn (a test-only dependency) and against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from fm_spark.train.metrics import (
    Accumulator,
    binary_entropy,
    calibration,
    evaluate,
    log_loss,
    log_loss_from_logits,
    normalized_entropy,
    roc_auc,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(5000) < 0.3).astype(np.float32)
    scores = np.round(rng.normal(y, 1.0), 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_auc_hand_values() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_logloss_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(2000) < 0.2).astype(np.float64)
    z = rng.normal(0, 2, 2000)
    p = 1 / (1 + np.exp(-z))
    expected = sk_log_loss(y, p)
    assert log_loss(y, p) == pytest.approx(expected, rel=1e-9)
    assert log_loss_from_logits(y, z) == pytest.approx(expected, rel=1e-9)


def test_logloss_from_logits_stays_exact_where_probabilities_saturate() -> None:
    # p = sigmoid(-60) rounds to 0 in float32; the logit form still costs exactly 60 nats.
    assert log_loss_from_logits([1.0], [-60.0]) == pytest.approx(60.0, rel=1e-12)


def test_normalized_entropy_and_calibration() -> None:
    y = np.array([1, 0, 0, 0], dtype=float)
    base = np.full(4, 0.25)
    ll = log_loss(y, base)
    assert binary_entropy(0.25) == pytest.approx(ll)
    assert normalized_entropy(ll, 0.25) == pytest.approx(1.0)
    assert calibration(base, y) == pytest.approx(1.0)
    assert calibration(base * 2, y) == pytest.approx(2.0)


def test_accumulator_equals_one_shot_evaluation() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random(3000) < 0.4).astype(np.float32)
    z = rng.normal(0, 1, 3000).astype(np.float32)
    acc = Accumulator()
    for lo in range(0, 3000, 700):
        acc.update(y[lo : lo + 700], z[lo : lo + 700])
    got, want = acc.compute(), evaluate(y, z)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9)
    assert want["rows"] == 3000
    assert Accumulator().compute() == {"rows": 0}
