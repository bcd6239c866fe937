"""One optimizer step on one batch, the path every training step (and the benchmark) takes."""

from __future__ import annotations

import math

import torch
from torch import nn

from fm_spark.config import TrainSpec
from fm_spark.data.reader import Batch
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.decay import RowDecay

__all__ = ["NonFiniteStep", "StepFn", "non_finite_message", "to_device"]


class NonFiniteStep(Exception):
    """The step's loss was not finite; raised before backward, so no weight saw it."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Host -> device without blocking the host (batches for CUDA come pinned from the
    reader's prefetch thread, see ``open_batches(pin_memory=...)``)."""
    if device.type != "cuda":
        return batch

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)

    return Batch(move(batch.ids), move(batch.values), move(batch.label))


class StepFn:
    """One optimizer step on one batch: forward, BCE + L2 on the touched rows, backward, update.

    ``net`` is what runs forward (the DDP wrapper when distributed); ``model`` is the plain
    module, used for the penalty so the wrapper stays a pure ``forward``. The loss is checked
    *before* backward: a NaN never reaches the weights. Shared with the benchmark, so what it
    measures is this code path.
    """

    def __init__(
        self,
        net: nn.Module,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        device: torch.device,
        decay: RowDecay | None = None,
    ) -> None:
        self.net, self.model, self.optimizers, self.device = net, model, optimizers, device
        self.decay = decay
        self.autocast = device.type == "cuda"
        self.loss_fn = nn.BCEWithLogitsLoss()

    def __call__(self, batch: Batch) -> float:
        ids, values, label = to_device(batch, self.device)
        # Before the forward pass: row optimizers forget the last step's lookups here.
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.net(ids, values)
        # Mean BCE plus the per-example L2 (penalty sums over the batch's rows).
        loss = self.loss_fn(logits.float(), label) + self.model.penalty(ids) / ids.shape[0]
        if self.decay is not None:  # every row's decay since its last use (train/decay.py)
            loss = loss + self.decay.penalty()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteStep(value)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return value


def non_finite_message(
    value: float, epoch: int, step: int, global_step: int, spec: TrainSpec, fmap: FeatureMap
) -> str:
    """What a user reads when the loss blows up: where, and the two usual causes."""
    values = [v for v in fmap.value_columns if v]
    numeric = (
        f"the numeric value column(s) {', '.join(values[:5])} are not scaled (large raw values "
        "blow up the interaction terms: bin them or scale them in the feature config)"
        if values
        else "numeric inputs are not scaled (this feature map has no value columns, so "
        "this is unlikely here)"
    )
    return (
        f"loss became {value} at epoch {epoch}, step {step} (global step {global_step}); "
        "training stopped before applying it, so the last checkpoint and best weights are "
        f"intact. Likely causes: the learning rate is too high for {spec.optimizer} "
        f"(train.lr={spec.lr:g}; try --set train.lr={spec.lr / 10:g}), or {numeric}."
    )
