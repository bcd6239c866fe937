"""The plots a person would rather look at than a metrics table: matplotlib PNGs.

Learning curves (train loss and valid logloss / AUC per epoch), ROC and a reliability
diagram (mean prediction against observed click rate per probability bin, with the bin
counts), each saved as one PNG. The Agg backend: no display needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["calibration_plot", "learning_curves", "roc_plot"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h.get("train_loss") for h in history], marker="o", label="train loss")
    ax1.plot(
        epochs,
        [h.get("valid", {}).get("logloss") for h in history],
        marker="o",
        label="valid logloss",
    )
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("logloss")
    ax1.legend()
    ax2.plot(epochs, [h.get("valid", {}).get("auc") for h in history], marker="o", color="C2")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("valid AUC")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc_plot(labels: np.ndarray, probs: np.ndarray, path: Path, title: str) -> Path:
    from fm_spark.train.metrics import roc_auc

    plt = _pyplot()
    order = np.argsort(-probs, kind="mergesort")
    y = labels[order] > 0.5
    tpr = np.r_[0.0, np.cumsum(y) / max(y.sum(), 1)]
    fpr = np.r_[0.0, np.cumsum(~y) / max((~y).sum(), 1)]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc(labels, probs):.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def calibration_plot(
    labels: np.ndarray, probs: np.ndarray, path: Path, title: str, bins: int = 15
) -> Path:
    """Equal-count bins, so sparse high-probability regions do not hide in one bar."""
    plt = _pyplot()
    order = np.argsort(probs, kind="mergesort")
    chunks = [c for c in np.array_split(order, bins) if len(c)]
    mean_p = np.array([probs[c].mean() for c in chunks])
    rate = np.array([labels[c].mean() for c in chunks])
    fig, ax = plt.subplots(figsize=(5, 5))
    top = float(max(mean_p.max(initial=0), rate.max(initial=0), 1e-3)) * 1.05
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="calibrated")
    ax.plot(mean_p, rate, marker="o", label=f"{len(chunks)} equal-count bins")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed click rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
