"""Building what a worker trains: the model from the config, and optimizers for its parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fm_spark.config import DatasetConfig, TrainSpec
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.errors import TrainError

__all__ = ["build", "make_optimizers", "model_hparams"]


def model_hparams(cfg: DatasetConfig, name: str, dense_only: bool = False) -> dict[str, Any]:
    """``build_model`` keyword arguments: ``train``'s sparse/L2, overridden by the model's own
    section; ``dense_only`` forces dense embedding gradients (NCCL cannot reduce sparse ones).
    """
    params = {
        "sparse": cfg.train.sparse,
        "l2_embed": cfg.train.l2_embed,
        "l2_linear": cfg.train.l2_linear,
        **cfg.model_params(name),
    }
    if dense_only:
        params["sparse"] = False
    return params


def build(cfg: DatasetConfig, name: str, fmap: FeatureMap, dense_only: bool = False) -> nn.Module:
    from fm_spark.models import build_model

    try:
        return build_model(name, fmap, **model_hparams(cfg, name, dense_only))
    except (TypeError, ValueError) as exc:
        raise TrainError(f"cannot build model {name!r}: {exc}") from None


def make_optimizers(model: nn.Module, spec: TrainSpec) -> list[torch.optim.Optimizer]:
    """Dense parameters get Adam/Adagrad; sparse embedding tables their sparse counterpart.

    ``SparseAdam`` updates only the rows a batch touched (lazy Adam); ``Adagrad`` handles
    sparse gradients itself. Weight decay is left out on purpose: on a sparse table it would
    touch every row; L2 comes from the model's ``penalty`` on the rows in the batch instead.
    """
    sparse = list(model.sparse_parameters())
    dense = list(model.dense_parameters())
    opts: list[torch.optim.Optimizer] = []
    if spec.optimizer == "adam":
        if dense:
            opts.append(torch.optim.Adam(dense, lr=spec.lr))
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=spec.lr))
    else:
        if dense:
            opts.append(torch.optim.Adagrad(dense, lr=spec.lr))
        if sparse:
            opts.append(torch.optim.Adagrad(sparse, lr=spec.lr))
    return opts
