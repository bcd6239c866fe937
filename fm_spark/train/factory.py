"""Building what a worker trains: the model from the config, and optimizers for its parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fm_spark.config import DatasetConfig, TrainSpec
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.errors import TrainError

if TYPE_CHECKING:
    from fm_spark.train.optim import Exchange

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


def make_optimizers(
    model: nn.Module,
    spec: TrainSpec,
    *,
    exchange: Exchange | None = None,
    row_updates: bool = True,
) -> list[torch.optim.Optimizer]:
    """The dense parameters' optimizer and, for tables built ``sparse``, the row optimizer.

    ``row_updates`` (training's path) gives the tables a :class:`RowOptimizer` with
    ``spec.optimizer``'s rule; ``exchange`` is the DDP row all-gather. Without it the tables keep
    ``nn.Embedding``'s sparse COO gradients for ``SparseAdam``/``Adagrad``: the generic path,
    kept as the reference the row path is tested and benchmarked against (FTRL has none).
    Weight decay is left out on purpose: on a table it would touch every row; L2 comes from
    the model's ``penalty`` on the rows in the batch instead.
    """
    from fm_spark.train.optim import FTRL, RowOptimizer

    sparse = list(model.sparse_parameters())
    dense = list(model.dense_parameters())
    opts: list[torch.optim.Optimizer] = []
    if dense:
        if spec.optimizer == "adam":
            opts.append(torch.optim.Adam(dense, lr=spec.lr))
        elif spec.optimizer == "adagrad":
            opts.append(torch.optim.Adagrad(dense, lr=spec.lr))
        else:
            opts.append(
                FTRL(dense, lr=spec.lr, beta=spec.ftrl_beta, l1=spec.ftrl_l1, l2=spec.ftrl_l2)
            )
    if not sparse:
        return opts
    if row_updates:
        opts.append(
            RowOptimizer(
                model.row_tables(),
                rule=spec.optimizer,
                lr=spec.lr,
                ftrl_beta=spec.ftrl_beta,
                ftrl_l1=spec.ftrl_l1,
                ftrl_l2=spec.ftrl_l2,
                exchange=exchange,
            )
        )
    elif spec.optimizer == "adam":
        opts.append(torch.optim.SparseAdam(sparse, lr=spec.lr))
    elif spec.optimizer == "adagrad":
        opts.append(torch.optim.Adagrad(sparse, lr=spec.lr))
    else:
        raise TrainError("ftrl updates sparse tables only through row updates")
    return opts
