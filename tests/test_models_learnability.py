"""The models learn what they are built to learn, on data planted from a known model.

Interactions are planted with zero-mean first-order effects, so a model that ignores pairs is
left near chance: FM must beat LR when the planted pairs are field-agnostic (an FM), and FFM
must beat FM (same ``embed_dim``) when they are field-aware (an FFM: each field pair has its
own independent interaction, which shared FM vectors of that size cannot represent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model

FIELD_SIZES = [12, 12, 12, 12, 12, 12]
ROWS_TRAIN, ROWS_TEST = 16_000, 8_000


def planted(kind: str, seed: int) -> tuple[FeatureMap, torch.Tensor, torch.Tensor]:
    """Ids uniform per field; logit = small linear part + scaled FM or FFM pair term."""
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    rng = np.random.default_rng(seed)
    n, nf, k_true = fmap.num_features, fmap.num_fields, 2
    rows = ROWS_TRAIN + ROWS_TEST
    ids = np.stack(
        [
            o + rng.integers(0, s, rows)
            for o, s in zip(fmap.field_offsets, fmap.field_sizes, strict=True)
        ],
        axis=1,
    )
    logit = rng.normal(0, 0.2, n)[ids].sum(axis=1) - 0.3
    if kind == "fm":
        v = rng.normal(0, 1, (n, k_true))
        e = v[ids]  # [rows, F, k]
        pairs = 0.5 * ((e.sum(axis=1) ** 2) - (e**2).sum(axis=1)).sum(axis=1)
    else:
        v = rng.normal(0, 1, (n, nf, k_true))
        pairs = np.zeros(rows)
        for i in range(nf):
            for j in range(i + 1, nf):
                pairs += (v[ids[:, i], j] * v[ids[:, j], i]).sum(axis=1)
    logit += 1.5 * pairs / pairs.std()
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return fmap, torch.from_numpy(ids), torch.from_numpy(labels)


def fit_auc(name: str, fmap: FeatureMap, ids: torch.Tensor, y: torch.Tensor, **hp: object):
    torch.manual_seed(0)
    model = build_model(name, fmap, init_std=0.1, **hp)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_ids, train_y = ids[:ROWS_TRAIN], y[:ROWS_TRAIN]
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        order = torch.randperm(ROWS_TRAIN, generator=g)
        for batch in order.split(512):
            opt.zero_grad()
            loss = loss_fn(model(train_ids[batch]), train_y[batch])
            (loss + model.penalty(train_ids[batch])).backward()
            opt.step()
    with torch.no_grad():
        scores = model(ids[ROWS_TRAIN:]).numpy()
    return roc_auc_score(y[ROWS_TRAIN:].numpy(), scores)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: intra-op threads only add sync overhead (and nondeterministic reductions)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def fm_data():
    return planted("fm", seed=1)


@pytest.fixture(scope="module")
def ffm_data():
    return planted("ffm", seed=2)


def test_fm_beats_lr_on_planted_pairs(fm_data) -> None:
    fmap, ids, y = fm_data
    lr = fit_auc("lr", fmap, ids, y)
    fm = fit_auc("fm", fmap, ids, y, embed_dim=4, l2_embed=1e-5)
    assert fm > lr + 0.1, (lr, fm)


def test_ffm_beats_fm_on_field_aware_pairs(ffm_data) -> None:
    fmap, ids, y = ffm_data
    fm = fit_auc("fm", fmap, ids, y, embed_dim=4, l2_embed=1e-5)
    ffm = fit_auc("ffm", fmap, ids, y, embed_dim=4, l2_embed=1e-5)
    assert ffm > fm + 0.05, (fm, ffm)
