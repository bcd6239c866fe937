"""Batch size and learning rate fitted to the train split before training starts.

``train.batch_size`` and ``train.lr`` are tuned together on logs of 100K rows and more (see
README, Defaults). On a small split the same batch gives a handful of optimizer steps per
epoch (4 steps of 4,096 on a 16K-row log) and the model under-fits whatever the epoch budget.
So the batch shrinks until an epoch has ``train.min_steps_per_epoch`` steps, and the learning
rate follows it by ``train.lr_scaling`` (square root by default: the usual rule for adaptive
optimizers, whose step size does not grow with the gradient's magnitude). The adapted values
are what the run records in ``config.yaml`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
import math

from fm_spark.config import DatasetConfig

__all__ = ["MIN_WORKER_BATCH", "fit_to_data"]

log = logging.getLogger("fm_spark.train")

# Below this many rows per worker a step is mostly overhead and its gradient mostly noise.
MIN_WORKER_BATCH = 32


def fit_to_data(cfg: DatasetConfig, train_rows: int) -> DatasetConfig:
    """``cfg`` with ``train.batch_size``/``train.lr`` lowered for a small train split."""
    spec = cfg.train
    workers = spec.workers
    per_worker = train_rows // workers
    batch = spec.batch_size
    if per_worker // max(batch // workers, 1) >= spec.min_steps_per_epoch:
        return cfg
    fitted = max(per_worker // spec.min_steps_per_epoch, MIN_WORKER_BATCH) * workers
    fitted = min(fitted, batch)
    if fitted == batch:
        return cfg
    ratio = fitted / batch
    scale = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[spec.lr_scaling]
    lr = spec.lr * scale
    log.info(
        "train split of %d rows: batch %d -> %d (>= %d steps per epoch), lr %g -> %g (%s scaling)",
        train_rows,
        batch,
        fitted,
        spec.min_steps_per_epoch,
        spec.lr,
        lr,
        spec.lr_scaling,
    )
    train = spec.model_copy(update={"batch_size": fitted, "lr": lr})
    return cfg.model_copy(update={"train": train})
