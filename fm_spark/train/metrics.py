"""Offline CTR metrics: AUC, logloss, normalized entropy and calibration, in numpy.

No scikit-learn at run time (it is a test dependency only). Predictions of a split are
accumulated batch by batch (:class:`Accumulator`) and scored once, which is what AUC needs
(a global ranking) and is small next to the data: 8 bytes per row.

Logloss is computed from logits (``softplus(z) - y z``), exact even where a probability would
round to 0 or 1, so a confident mistake costs what it should instead of a clipped constant.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "Accumulator",
    "binary_entropy",
    "calibration",
    "evaluate",
    "log_loss",
    "log_loss_from_logits",
    "normalized_entropy",
    "roc_auc",
]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half.

    Tied scores share their average rank, so a constant predictor scores exactly 0.5. NaN when
    the labels hold only one class (AUC is undefined there).
    """
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    positives = float(y.sum())
    negatives = float(y.size - positives)
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    # Average rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], s.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.repeat(run_rank, ends - starts)
    rank_sum = float(ranks[y[order] > 0.5].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy, from logits: ``mean(log(1 + e^z) - y z)``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy from probabilities (clipped to ``[eps, 1 - eps]``)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def binary_entropy(rate: float) -> float:
    """Entropy (nats) of a Bernoulli(rate): the logloss of always predicting the base rate."""
    if rate <= 0.0 or rate >= 1.0:
        return 0.0
    return -(rate * math.log(rate) + (1 - rate) * math.log1p(-rate))


def normalized_entropy(logloss: float, base_rate: float) -> float:
    """Logloss over the entropy of the base rate (He et al., 2014): < 1 beats the base rate.

    Comparable across datasets with different click rates, unlike raw logloss.
    """
    h = binary_entropy(base_rate)
    return logloss / h if h > 0 else math.nan


def calibration(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean predicted probability over the observed click rate; 1.0 is calibrated."""
    rate = float(np.mean(labels))
    return float(np.mean(probs)) / rate if rate > 0 else math.nan


def evaluate(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """All four metrics, plus rows and the observed click rate, for one split."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if y.size == 0:
        return {"rows": 0}
    p = 1.0 / (1.0 + np.exp(-z))
    ll = log_loss_from_logits(y, z)
    rate = float(y.mean())
    return {
        "rows": int(y.size),
        "positive_rate": rate,
        "auc": roc_auc(y, z),  # logits: no ties from probabilities rounding to 1.0
        "logloss": ll,
        "normalized_entropy": normalized_entropy(ll, rate),
        "calibration": calibration(p, y),
    }


class Accumulator:
    """Collects ``(labels, logits)`` batch by batch; :meth:`compute` scores them all at once."""

    def __init__(self) -> None:
        self._labels: list[np.ndarray] = []
        self._logits: list[np.ndarray] = []

    def update(self, labels: np.ndarray, logits: np.ndarray) -> None:
        self._labels.append(np.asarray(labels, dtype=np.float32).ravel())
        self._logits.append(np.asarray(logits, dtype=np.float32).ravel())

    def compute(self) -> dict[str, float]:
        if not self._labels:
            return evaluate(np.empty(0), np.empty(0))
        return evaluate(np.concatenate(self._labels), np.concatenate(self._logits))
