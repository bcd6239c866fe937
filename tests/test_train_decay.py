"""The lazy row prior (train.prior_l2_*): the charge per row, its rate, and what it is for."""

from __future__ import annotations

import pytest
import torch

from fm_spark.config import TrainSpec
from fm_spark.data.reader import Batch
from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model
from fm_spark.train.decay import RowDecay
from fm_spark.train.errors import TrainError
from fm_spark.train.factory import make_optimizers
from fm_spark.train.step import StepFn

FMAP = FeatureMap.synthetic([6, 8, 5])
CPU = torch.device("cpu")


def _model(name: str, sparse: bool = True):
    torch.manual_seed(0)
    extra = {} if name == "lr" else {"embed_dim": 3}
    return build_model(name, FMAP, sparse=sparse, init_std=0.3, **extra).double()


def _ids(rows: list[list[int]]) -> torch.Tensor:
    offsets = torch.tensor(FMAP.field_offsets)
    return torch.tensor(rows) + offsets


@pytest.mark.parametrize("name", ["lr", "fm", "ffm"])
def test_a_row_is_charged_for_every_step_since_its_last_use(name: str) -> None:
    net = _model(name)
    make_optimizers(net, TrainSpec(lr=0.01))  # switches the tables to row updates
    decay = RowDecay(net, linear=0.3, embed=0.7)
    tables = [(net.linear.weights, 0.3)] + [(t, 0.7) for t in net.second_order_tables()]
    last = {id(t): torch.zeros(t.num_embeddings, dtype=torch.long) for t, _ in tables}
    batches = [_ids([[0, 1, 2], [0, 3, 2]]), _ids([[1, 1, 4]]), _ids([[0, 1, 2], [5, 7, 4]])]
    for step, ids in enumerate(batches, start=1):
        with torch.no_grad():  # the expected charge, from the weights before the step
            expected = 0.0
            for table, rate in tables:
                used = ids.reshape(-1).unique()
                delta = step - last[id(table)][used]
                rows = table.weight[used]
                expected += 0.5 * rate * float((rows.pow(2).sum(dim=1) * delta).sum())
                last[id(table)][used] = step
        for table, _ in tables:
            table.lookups = []
        net(ids)
        assert float(decay.penalty().detach()) == pytest.approx(expected, rel=1e-12)


def test_the_rate_is_lambda_over_the_rows_of_an_epoch() -> None:
    net = _model("fm")
    make_optimizers(net, TrainSpec())
    decay = RowDecay.build(net, TrainSpec(prior_l2_linear=8.0, prior_l2_embed=32.0), 16_000)
    assert [rate for _, rate, _ in decay.tables] == [8.0 / 16_000, 32.0 / 16_000]
    off = TrainSpec(prior_l2_linear=0.0, prior_l2_embed=0.0)
    assert RowDecay.build(net, off, 16_000) is None


def test_dense_tables_need_the_prior_off() -> None:
    with pytest.raises(ValueError, match="which needs train"):
        TrainSpec(sparse=False)
    TrainSpec(sparse=False, prior_l2_linear=0.0, prior_l2_embed=0.0)
    dense = _model("fm", sparse=False)
    make_optimizers(dense, TrainSpec(prior_l2_linear=0.0, prior_l2_embed=0.0))
    with pytest.raises(TrainError, match="row optimizer"):
        RowDecay(dense, linear=0.0, embed=1e-3)


def _rare_row_norm(prior: float, l2: float) -> float:
    """Train an FM on batches where field 0's value 5 is rare: the norm of its factor row."""
    net = _model("fm")
    spec = TrainSpec(lr=0.05, prior_l2_linear=0.0, prior_l2_embed=prior)
    net.l2_embed = l2
    opts = make_optimizers(net, spec)  # before the prior: it needs the row updates on
    decay = RowDecay.build(net, spec, 200 * 32)  # 200 steps of 32 rows: one "epoch"
    step = StepFn(net, net, opts, CPU, decay)
    g = torch.Generator().manual_seed(3)
    for k in range(200):
        ids = torch.randint(0, 5, (32, 3), generator=g)
        if k % 20 == 0:
            ids[0, 0] = 5
        label = torch.rand(32, generator=g, dtype=torch.float64).lt(0.5).double()
        step(Batch(ids + torch.tensor(FMAP.field_offsets), None, label))
    return float(net.embedding.weight.detach()[FMAP.field_offsets[0] + 5].norm())


def test_decay_holds_rare_rows_back_where_per_occurrence_l2_does_not() -> None:
    free = _rare_row_norm(0.0, 0.0)
    per_occurrence = _rare_row_norm(0.0, 0.05)
    decayed = _rare_row_norm(0.05 * 200 * 32, 0.0)
    assert decayed < 0.5 * free
    assert decayed < 0.5 * per_occurrence
