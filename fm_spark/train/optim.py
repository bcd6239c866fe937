"""Optimizers: the fused row update for the tables, and FTRL-Proximal for dense parameters.

A CTR model's tables have millions of rows and a batch touches a few thousand. The generic
sparse path (``nn.Embedding(sparse=True)`` + ``SparseAdam``) builds a COO gradient with one
entry per *occurrence* (batch x columns rows of ``dim`` floats), coalesces it (a sort and a
reduction), and then reads and writes the state through ``sparse_mask``: on the FFM table that
was more than half of the whole step. :class:`RowOptimizer` instead takes the rows a
:class:`~fm_spark.models.layers.RowTable` deduplicated in its forward pass (``unique`` once
per table and batch), whose gradient autograd already accumulated densely over the unique
rows, and applies the update rule to exactly those rows of the table and its state, in place.

Update rules (per row, ``g`` the row's gradient):

- ``adam``: lazy Adam, exactly ``torch.optim.SparseAdam``'s arithmetic (moments of a row move
  only when the row is in a batch; bias correction from the table's step count).
- ``adagrad``: exactly ``torch.optim.Adagrad`` on a sparse gradient (no lr decay).
- ``ftrl``: FTRL-Proximal (McMahan et al., 2013, "Ad Click Prediction: a View from the
  Trenches"), per coordinate: ``sigma = (sqrt(n + g^2) - sqrt(n)) / alpha``,
  ``z += g - sigma * w``, ``n += g^2``, ``w = 0 if |z| <= l1 else
  -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2)`` with ``alpha = lr``. With ``l1 > 0``
  it sets weights to exactly zero. ``z`` starts at ``-(w0 (beta / alpha + l2) + sign(w0) l1)``,
  where the closed form returns the initial weights ``w0``: the paper's ``z = 0`` suits its
  zero-initialised LR but would collapse a factor table's random initialisation (the symmetry
  breaking FM needs) to almost zero on each row's first update.

Under DDP the tables stay out of DDP: an ``exchange`` callable (see
:mod:`fm_spark.train.row_exchange`) all-gathers each worker's unique ids and row gradients, and
every worker applies the same update, so the traffic scales with the batch's unique ids, not
with the table.

On the CPU the three rules run in :mod:`fm_spark.train.row_kernel` (one pass per row, in
place) when it is built; the torch ops below are the fallback and the tests' reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from fm_spark.models.layers import RowTable
from fm_spark.train import row_kernel

__all__ = ["FTRL", "RowOptimizer", "merge_rows"]

Exchange = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def merge_rows(ids: Tensor, grads: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the gradients of repeated ids: ``(unique ids, [U, dim] gradient sums)``."""
    unique, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    if unique.numel() == ids.numel():
        order = torch.empty_like(inverse)
        order[inverse] = torch.arange(ids.numel(), device=ids.device)
        return unique, grads.index_select(0, order)
    out = grads.new_zeros(unique.numel(), grads.shape[1])
    out.index_add_(0, inverse, grads)
    return unique, out


def _ftrl_start(w: Tensor, alpha: float, beta: float, l1: float, l2: float) -> Tensor:
    """The ``z`` at which the closed form returns ``w`` (with ``n = 0``)."""
    return -(w * (beta / alpha + l2) + w.sign() * l1)


def _ftrl_rows(
    w: Tensor, z: Tensor, n: Tensor, g: Tensor, alpha: float, beta: float, l1: float, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """One FTRL-Proximal step on rows ``w`` with state ``z``, ``n``: new (w, z, n)."""
    n_new = n + g * g
    sqrt_new = n_new.sqrt()
    sigma = (sqrt_new - n.sqrt()).div_(alpha)
    z_new = z + g - sigma * w
    shrunk = z_new - z_new.sign() * l1
    w_new = -shrunk / ((beta + sqrt_new) / alpha + l2)
    if l1 > 0:
        w_new = torch.where(z_new.abs() <= l1, torch.zeros_like(w_new), w_new)
    return w_new, z_new, n_new


class RowOptimizer(torch.optim.Optimizer):
    """Updates the rows of :class:`RowTable` s that this step's forward pass looked up.

    Constructing it switches the tables to row updates (``table.row_updates = True``), so
    their lookups record deduplicated rows instead of producing a table gradient. Its state
    is an ordinary optimizer state (``state_dict`` / ``load_state_dict`` work, checkpoints
    resume). ``zero_grad`` forgets the recorded lookups: call it before the forward pass.
    """

    def __init__(
        self,
        tables: Iterable[RowTable],
        *,
        rule: str,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float | None = None,
        ftrl_beta: float = 1.0,
        ftrl_l1: float = 0.0,
        ftrl_l2: float = 0.0,
        exchange: Exchange | None = None,
    ) -> None:
        if rule not in ("adam", "adagrad", "ftrl"):
            raise ValueError(f"unknown row update rule {rule!r}")
        self.tables = list(tables)
        if eps is None:
            eps = 1e-8 if rule == "adam" else 1e-10
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "ftrl_beta": ftrl_beta,
            "ftrl_l1": ftrl_l1,
            "ftrl_l2": ftrl_l2,
        }
        super().__init__([t.weight for t in self.tables], defaults)
        self.rule = rule
        self.exchange = exchange
        for table in self.tables:
            table.row_updates = True
            table.lookups = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for table in self.tables:
            table.lookups = []

    def _rows_and_grads(self, table: RowTable) -> tuple[Tensor, Tensor]:
        """This step's (unique ids, row gradients) of ``table``, over all workers."""
        used = [lk for lk in table.lookups if lk.rows.grad is not None]
        dim = table.embedding_dim
        if not used:
            ids = torch.empty(0, dtype=torch.long, device=table.weight.device)
            grads = table.weight.new_empty(0, dim)
        elif len(used) == 1:
            ids, grads = used[0].ids, used[0].rows.grad
        else:
            ids, grads = merge_rows(
                torch.cat([lk.ids for lk in used]), torch.cat([lk.rows.grad for lk in used])
            )
        if self.exchange is not None:
            ids, grads = self.exchange(ids, grads)
        return ids, grads

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        group = self.param_groups[0]
        for table in self.tables:
            ids, grads = self._rows_and_grads(table)
            table.lookups = []
            if ids.numel() == 0:
                continue
            weight = table.weight
            state = self.state[weight]
            if not state:
                self._init_state(state, weight, group)
            state["step"] += 1
            grads = grads.to(weight.dtype)
            if self.rule == "adam":
                self._adam(weight, state, ids, grads, group)
            elif self.rule == "adagrad":
                self._adagrad(weight, state, ids, grads, group)
            else:
                self._ftrl(weight, state, ids, grads, group)

    def _init_state(self, state: dict[str, Any], weight: Tensor, group: dict) -> None:
        state["step"] = torch.zeros((), dtype=torch.float32)
        names = {"adam": ("exp_avg", "exp_avg_sq"), "adagrad": ("sum",), "ftrl": ("n",)}
        for name in names[self.rule]:
            state[name] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        if self.rule == "ftrl":
            state["z"] = _ftrl_start(
                weight, group["lr"], group["ftrl_beta"], group["ftrl_l1"], group["ftrl_l2"]
            )

    @staticmethod
    def _adam(weight: Tensor, state: dict, ids: Tensor, g: Tensor, group: dict) -> None:
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        step = float(state["step"])
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        if row_kernel.usable(weight, exp_avg, exp_avg_sq):
            row_kernel.adam(
                weight, exp_avg, exp_avg_sq, ids, g,
                beta1=beta1, beta2=beta2, eps=group["eps"], step_size=step_size,
            )  # fmt: skip
            return
        m = exp_avg.index_select(0, ids)
        v = exp_avg_sq.index_select(0, ids)
        m.add_(g.sub(m).mul_(1 - beta1))
        v.add_(g.pow(2).sub_(v).mul_(1 - beta2))
        exp_avg.index_copy_(0, ids, m)
        exp_avg_sq.index_copy_(0, ids, v)
        weight.index_add_(0, ids, m.div_(v.sqrt_().add_(group["eps"])).mul_(-step_size))

    @staticmethod
    def _adagrad(weight: Tensor, state: dict, ids: Tensor, g: Tensor, group: dict) -> None:
        total = state["sum"]
        if row_kernel.usable(weight, total):
            row_kernel.adagrad(weight, total, ids, g, group["lr"], group["eps"])
            return
        s = total.index_select(0, ids).addcmul_(g, g)
        total.index_copy_(0, ids, s)
        weight.index_add_(0, ids, g.div(s.sqrt_().add_(group["eps"])).mul_(-group["lr"]))

    @staticmethod
    def _ftrl(weight: Tensor, state: dict, ids: Tensor, g: Tensor, group: dict) -> None:
        if row_kernel.usable(weight, state["z"], state["n"]):
            row_kernel.ftrl(
                weight, state["z"], state["n"], ids, g, alpha=group["lr"],
                beta=group["ftrl_beta"], l1=group["ftrl_l1"], l2=group["ftrl_l2"],
            )  # fmt: skip
            return
        w, z, n = _ftrl_rows(
            weight.index_select(0, ids),
            state["z"].index_select(0, ids),
            state["n"].index_select(0, ids),
            g,
            group["lr"],
            group["ftrl_beta"],
            group["ftrl_l1"],
            group["ftrl_l2"],
        )
        weight.index_copy_(0, ids, w)
        state["z"].index_copy_(0, ids, z)
        state["n"].index_copy_(0, ids, n)


class FTRL(torch.optim.Optimizer):
    """FTRL-Proximal for dense parameters (biases, FwFM's field-pair weights): the same
    per-coordinate rule as :class:`RowOptimizer`'s ``ftrl``, applied to every element."""

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "beta": beta, "l1": l1, "l2": l2})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["z"] = _ftrl_start(
                        p, group["lr"], group["beta"], group["l1"], group["l2"]
                    )
                    state["n"] = torch.zeros_like(p)
                w, z, n = _ftrl_rows(
                    p, state["z"], state["n"], p.grad, group["lr"], group["beta"],
                    group["l1"], group["l2"],
                )  # fmt: skip
                p.copy_(w)
                state["z"].copy_(z)
                state["n"].copy_(n)
