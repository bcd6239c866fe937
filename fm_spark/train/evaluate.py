"""Scoring a whole split: the validation pass after each epoch and the final valid/test metrics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from fm_spark.data.reader import Batch, open_batches
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.metrics import Accumulator
from fm_spark.train.step import to_device

__all__ = ["evaluate_batches", "evaluate_split"]


def evaluate_split(
    model: nn.Module,
    url: str,
    fmap: FeatureMap,
    *,
    batch_size: int,
    device: torch.device,
    pool: str = "thread",
    workers: int = 2,
) -> dict[str, float]:
    """Metrics of ``model`` over a whole split (one pass, no shuffling, no gradients)."""
    with open_batches(
        url,
        fmap,
        batch_size=batch_size,
        pool=pool,
        workers=workers,
        pin_memory=device.type == "cuda",
    ) as it:
        return evaluate_batches(model, it, device)


def evaluate_batches(model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict:
    """Metrics of ``model`` over ``batches`` (no gradients; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    acc = Accumulator()
    autocast = device.type == "cuda"
    try:
        with torch.no_grad():
            for batch in batches:
                ids, values, label = to_device(batch, device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = model(ids, values)
                acc.update(label.cpu().numpy(), logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return acc.compute()
