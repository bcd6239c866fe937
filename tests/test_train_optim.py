"""The fused row update against the generic autograd path, step for step, per optimizer."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from torch import nn

from fm_spark.config import TrainSpec
from fm_spark.data.reader import Batch
from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import MODEL_NAMES, build_model
from fm_spark.models.layers import CTRModel
from fm_spark.train import row_kernel
from fm_spark.train.factory import make_optimizers
from fm_spark.train.optim import FTRL, RowOptimizer, merge_rows
from fm_spark.train.step import StepFn

FMAP = FeatureMap.synthetic([30, 50, 20, 40, 10, 25])
CPU = torch.device("cpu")


def hparams(name: str) -> dict:
    extra = {"hash_bits": 8} if name == "poly2" else {} if name == "lr" else {"embed_dim": 4}
    return {"sparse": True, "l2_embed": 1e-2, "l2_linear": 1e-2, "init_std": 0.1, **extra}


def batches(count: int = 4, size: int = 64, seed: int = 1) -> list[Batch]:
    """Skewed ids, so most rows repeat within a batch (the case deduplication is for)."""
    g = torch.Generator().manual_seed(seed)
    offsets, sizes = torch.tensor(FMAP.field_offsets), torch.tensor(FMAP.field_sizes)
    out = []
    for _ in range(count):
        u = torch.rand(size, FMAP.num_columns, generator=g)
        ids = offsets + (u.pow(2) * sizes).long()
        values = torch.rand(size, FMAP.num_columns, generator=g, dtype=torch.float64) + 0.5
        label = (torch.rand(size, generator=g) < 0.3).double()
        out.append(Batch(ids, values, label))
    return out


def model(name: str) -> CTRModel:
    torch.manual_seed(0)
    return build_model(name, FMAP, **hparams(name)).double()


def train(net: CTRModel, spec: TrainSpec, row_updates: bool, data: list[Batch]) -> list[float]:
    step = StepFn(net, net, make_optimizers(net, spec, row_updates=row_updates), CPU)
    return [step(b) for b in data]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_row_updates_match_the_autograd_path(name: str, optimizer: str) -> None:
    fused, generic = model(name), model(name)
    spec = TrainSpec(optimizer=optimizer, lr=0.05)
    data = batches()
    losses_fused = train(fused, spec, True, data)
    losses_generic = train(generic, spec, False, data)
    assert isinstance(make_optimizers(model(name), spec)[-1], RowOptimizer)
    torch.testing.assert_close(losses_fused, losses_generic, rtol=1e-10, atol=1e-12)
    moved = 0.0
    for (key, a), b, start in zip(
        fused.named_parameters(), generic.parameters(), model(name).parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=key)
        moved = max(moved, float((a - start).detach().abs().max()))
    assert moved > 1e-3  # the comparison is between trained weights, not two initialisations
    # No table-sized or COO gradient was ever made for the tables.
    assert all(t.weight.grad is None for t in fused.row_tables())


def textbook_ftrl(net: CTRModel, spec: TrainSpec, data: list[Batch]) -> None:
    """FTRL-Proximal from the paper's per-coordinate pseudo-code, on dense autograd gradients;
    a table row is updated only when the batch touched it (its gradient is non-zero)."""
    a, b, l1, l2 = spec.lr, spec.ftrl_beta, spec.ftrl_l1, spec.ftrl_l2
    # z starts where the closed form gives the initial weights (see fm_spark.train.optim).
    state = {
        p: (-(p.detach() * (b / a + l2) + p.detach().sign() * l1), torch.zeros_like(p))
        for p in net.parameters()
    }
    loss_fn = nn.BCEWithLogitsLoss()
    tables = {id(t.weight) for t in net.row_tables()}
    for batch in data:
        net.zero_grad()
        logits = net(batch.ids, batch.values)
        loss = loss_fn(logits, batch.label) + net.penalty(batch.ids) / batch.ids.shape[0]
        loss.backward()
        with torch.no_grad():
            for p in net.parameters():
                g = p.grad.to_dense() if p.grad.is_sparse else p.grad
                z, n = state[p]
                rows = (g != 0).any(dim=1) if id(p) in tables else torch.ones(len(p), dtype=bool)
                if p.dim() == 1:
                    rows = torch.ones_like(p, dtype=torch.bool)
                for r in rows.nonzero().flatten().tolist():
                    for c in range(p[r].numel()) if p.dim() > 1 else [None]:
                        idx = (r, c) if c is not None else (r,)
                        gi = float(g[idx])
                        sigma = ((n[idx] + gi * gi).sqrt() - n[idx].sqrt()) / a
                        z[idx] += gi - sigma * p[idx]
                        n[idx] += gi * gi
                        if abs(float(z[idx])) <= l1:
                            p[idx] = 0.0
                        else:
                            sign = 1.0 if z[idx] > 0 else -1.0
                            p[idx] = -(z[idx] - sign * l1) / ((b + n[idx].sqrt()) / a + l2)


@pytest.mark.parametrize("l1", [0.0, 0.05])
@pytest.mark.parametrize("name", ["lr", "fm", "fwfm"])
def test_ftrl_matches_the_papers_per_coordinate_rule(name: str, l1: float) -> None:
    spec = TrainSpec(optimizer="ftrl", lr=0.1, ftrl_beta=1.0, ftrl_l1=l1, ftrl_l2=0.01)
    data = batches(count=3, size=16)
    fused = model(name)
    train(fused, spec, True, data)
    reference = build_model(name, FMAP, **{**hparams(name), "sparse": False}).double()
    reference.load_state_dict(model(name).state_dict())
    textbook_ftrl(reference, spec, data)
    # The rule subtracts nearly equal square roots: operation order shows at ~1e-7 relative.
    for (key, a), b in zip(fused.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9, msg=key)
    weights = fused.linear.weights.weight
    if l1 > 0:
        assert int((weights == 0).sum()) > 0  # L1 sets weights to exactly zero
    assert float(weights.abs().max()) > 0


def test_ftrl_dense_optimizer_is_the_same_rule() -> None:
    p = nn.Parameter(torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64))
    opt = FTRL([p], lr=0.1, beta=1.0, l1=0.0, l2=0.0)
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    # First step from the initial weights, l1 = l2 = 0: w <- w - g / ((b + |g|) / a).
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    w = torch.tensor([0.5, -0.2, 0.0], dtype=torch.float64)
    want = w - g / ((1.0 + g.abs()) / 0.1)
    torch.testing.assert_close(p.detach(), want.double())


def test_merge_rows_sums_repeated_ids() -> None:
    ids = torch.tensor([7, 3, 7, 1, 3])
    grads = torch.arange(10, dtype=torch.float64).view(5, 2)
    merged_ids, merged = merge_rows(ids, grads)
    assert merged_ids.tolist() == [1, 3, 7]
    assert merged.tolist() == [[6.0, 7.0], [2.0 + 8.0, 3.0 + 9.0], [0.0 + 4.0, 1.0 + 5.0]]
    unique_ids, same = merge_rows(torch.tensor([5, 2]), grads[:2])
    assert unique_ids.tolist() == [2, 5] and same.tolist() == [[2.0, 3.0], [0.0, 1.0]]


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "ftrl"])
def test_row_optimizer_state_resumes(optimizer: str) -> None:
    spec = TrainSpec(optimizer=optimizer, lr=0.05)
    data = batches(count=4)
    straight = model("ffm")
    train(straight, spec, True, data)
    first = model("ffm")
    opts = make_optimizers(first, spec)
    step = StepFn(first, first, opts, CPU)
    for b in data[:2]:
        step(b)
    saved = copy.deepcopy({"model": first.state_dict(), "opts": [o.state_dict() for o in opts]})
    resumed = model("ffm")
    opts2 = make_optimizers(resumed, spec)
    resumed.load_state_dict(saved["model"])
    for o, s in zip(opts2, saved["opts"], strict=True):
        o.load_state_dict(s)
    step2 = StepFn(resumed, resumed, opts2, CPU)
    for b in data[2:]:
        step2(b)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluation_records_no_lookups() -> None:
    net = model("fm")
    make_optimizers(net, TrainSpec())
    with torch.no_grad():
        net(batches(count=1)[0].ids)
    assert all(t.lookups == [] for t in net.row_tables())


@pytest.mark.parametrize("optimizer", ["adam", "adagrad", "ftrl"])
def test_row_kernel_matches_its_torch_ops(optimizer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The C++ row update gives the torch ops' weights and state, step for step (FFM, FM)."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: row updates run on torch ops only")
    assert row_kernel.available(), "the row update C++ kernel did not build"
    calls = []
    for rule in ("adam", "adagrad", "ftrl"):
        real = getattr(row_kernel, rule)
        monkeypatch.setattr(
            row_kernel, rule, lambda *a, _f=real, **kw: calls.append(1) or _f(*a, **kw)
        )
    spec = TrainSpec(optimizer=optimizer, lr=0.05, ftrl_l1=0.02, ftrl_l2=0.01)
    data = batches()
    for name in ("ffm", "fm"):
        kernel, ops = model(name), model(name)
        opts = make_optimizers(kernel, spec)
        step = StepFn(kernel, kernel, opts, CPU)
        version = kernel.embedding.weight._version
        for b in data:
            step(b)
        assert calls, "the kernel was not used"
        # In-place like the torch ops: autograd sees the weights changed.
        assert kernel.embedding.weight._version > version
        monkeypatch.setenv("FM_SPARK_ROW_KERNEL", "0")
        ops_opts = make_optimizers(ops, spec)
        ops_step = StepFn(ops, ops, ops_opts, CPU)
        for b in data:
            ops_step(b)
        monkeypatch.delenv("FM_SPARK_ROW_KERNEL")
        for (key, a), b in zip(kernel.named_parameters(), ops.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=key)
        for s1, s2 in zip(opts[-1].state.values(), ops_opts[-1].state.values(), strict=True):
            for key in s1:
                torch.testing.assert_close(s1[key], s2[key], rtol=1e-12, atol=1e-14, msg=key)
        assert float((kernel.embedding.weight - model(name).embedding.weight).abs().max()) > 1e-3


def test_tables_share_one_unique_per_batch() -> None:
    """The linear and factor tables look up the same ids: one sort, the same (ids, inverse);
    a new tensor, or the same one changed in place, is deduplicated again."""
    net = model("ffm")
    make_optimizers(net, TrainSpec())
    ids = batches(count=1)[0].ids.clone()
    net(ids).sum().backward()
    linear, factors = net.linear.weights.lookups[0], net.embedding.lookups[0]
    assert linear.ids is factors.ids and linear.inverse is factors.inverse
    assert torch.equal(factors.ids[factors.inverse].view(ids.shape), ids)
    ids[0, 0] = ids[0, 1]  # in place: the cached result no longer describes it
    for table in net.row_tables():
        table.lookups = []
    net(ids).sum().backward()
    again = net.embedding.lookups[0]
    assert again.ids is not factors.ids
    assert torch.equal(again.ids[again.inverse].view(ids.shape), ids)


@pytest.mark.parametrize("high", [1, 50, 1_500, 3_000, 10_000_000])
def test_deduplicate_agrees_with_torch_unique_dense_or_sparse_ids(high: int) -> None:
    """Small id ranges take the bincount path, wide ones the sort; both are ``torch.unique``."""
    from fm_spark.models.layers import _unique

    flat = torch.randint(0, high, (4_096,), generator=torch.Generator().manual_seed(high))
    want = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
    for got, expected in zip(_unique(flat), want, strict=True):
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected)
