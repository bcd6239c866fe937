"""Exactness of the FM family against brute-force double sums written from the definitions."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fm_spark.features.feature_map import ColumnInfo, FeatureMap, FieldInfo
from fm_spark.models import MODEL_NAMES, MODELS, CTRModel, build_model, ffm_kernel, poly2_hash
from fm_spark.models.reference import OneGatherFFM, TextbookFFM

FIELD_SIZES = [5, 7, 3, 9, 4]
HYPER = {
    "lr": {},
    "poly2": {"hash_bits": 6},
    "fm": {"embed_dim": 3},
    "ffm": {"embed_dim": 3},
    "fwfm": {"embed_dim": 3},
}


def multi_slot_map() -> FeatureMap:
    """Fields a (1 column), tags (3 slots of one multi-valued field), b (1 column), c (1 column),
    with the columns of ``tags`` deliberately not adjacent to each other in field order."""
    fields, columns, offset = [], [], 0
    spec = [("a", 4, ["a"]), ("tags", 6, ["tags_0", "tags_1", "tags_2"]), ("b", 5, ["b"])]
    spec.append(("c", 3, ["c"]))
    for name, size, cols in spec:
        multi = len(cols) > 1
        fields.append(
            FieldInfo(
                name=name,
                source=name,
                kind="multi_categorical" if multi else "categorical",
                encoding="hash",
                offset=offset,
                size=size,
                columns=cols,
                num_buckets=size - 1,
                hash_salt=name,
                separator="|" if multi else None,
                max_values=len(cols) if multi else None,
            )
        )
        offset += size
    order = ["a", "tags_0", "b", "tags_1", "c", "tags_2"]
    for col in order:
        columns.append(ColumnInfo(name=col, field=col.split("_")[0]))
    return FeatureMap(
        dataset="multi", fields=fields, columns=columns, num_features=offset, config_hash="t"
    )


def random_batch(
    feature_map: FeatureMap, batch: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    offsets, sizes = feature_map.field_offsets, feature_map.field_sizes
    ids = torch.stack(
        [
            offsets[f] + torch.randint(0, sizes[f], (batch,), generator=g)
            for f in feature_map.column_fields
        ],
        dim=1,
    )
    values = torch.rand(ids.shape, generator=g, dtype=dtype) * 2 - 0.5
    values[torch.rand(ids.shape, generator=g) < 0.2] = 0.0  # some padding
    return ids, values


def randomised(model: CTRModel, seed: int = 0) -> CTRModel:
    """Every parameter non-zero and O(1), so no term of the sum can hide behind a zero init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return model


def make(name: str, feature_map: FeatureMap, **extra: object) -> CTRModel:
    return randomised(build_model(name, feature_map, **HYPER[name], **extra).double())


# -- brute force, one term at a time, from the definitions ------------------------------------
def brute_force(name: str, model: CTRModel, ids: torch.Tensor, values: torch.Tensor) -> list:
    cf = model.column_fields.tolist()
    w = model.linear.weights.weight[:, 0]
    out = []
    for b in range(ids.shape[0]):
        idx, x = ids[b].tolist(), values[b]
        total = model.linear.bias[0] + sum(w[idx[i]] * x[i] for i in range(len(idx)))
        for i in range(len(idx)):
            for j in range(i + 1, len(idx)):
                a, c = idx[i], idx[j]
                if name == "poly2":
                    term = model.pair_weights.weight[poly2_hash(a, c, model.hash_bits), 0]
                elif name == "fm":
                    term = model.embedding.weight[a] @ model.embedding.weight[c]
                elif name == "ffm":
                    k = model.embed_dim
                    va = model.embedding.weight[a, cf[j] * k : (cf[j] + 1) * k]
                    vc = model.embedding.weight[c, cf[i] * k : (cf[i] + 1) * k]
                    term = va @ vc
                elif name == "fwfm":
                    r = fwfm_field_pair_weight(model, cf[i], cf[j])
                    term = r * (model.embedding.weight[a] @ model.embedding.weight[c])
                else:
                    term = torch.zeros((), dtype=torch.float64)
                total = total + term * x[i] * x[j]
        out.append(total)
    return out


def fwfm_field_pair_weight(model: CTRModel, f: int, g: int) -> torch.Tensor:
    """r for the unordered field pair, counting through the packed upper triangle by hand."""
    lo, hi = min(f, g), max(f, g)
    index = 0
    for a in range(model.num_fields):
        for b in range(a, model.num_fields):
            if (a, b) == (lo, hi):
                return model.field_pair_weights[index]
            index += 1
    raise AssertionError("unreachable")


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["one_column_per_field", "multi_slot"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_equals_brute_force(name: str, layout: str) -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES) if layout == "one_column_per_field" else None
    fmap = fmap or multi_slot_map()
    model = make(name, fmap)
    ids, values = random_batch(fmap, batch=12, seed=1)
    got = model(ids, values)
    want = torch.stack(brute_force(name, model, ids, values))
    assert got.shape == (12,)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert want.std() > 0.1  # the comparison is not between two constants


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_default_values_are_ones(name: str) -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    model = make(name, fmap)
    ids, _ = random_batch(fmap, batch=8, seed=2)
    torch.testing.assert_close(model(ids), model(ids, torch.ones(ids.shape, dtype=torch.float64)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_zero_value_switches_a_column_off(name: str) -> None:
    fmap = multi_slot_map()
    model = make(name, fmap)
    ids, values = random_batch(fmap, batch=16, seed=3)
    values = values.abs() + 0.5
    other = ids.clone()
    other[:, 3] = fmap.field_offsets[fmap.column_fields[3]] + (ids[:, 3] + 1 - 7) % 6  # tags_1
    # With the value on, the id matters (so the check below can fail) ...
    assert not torch.allclose(model(ids, values), model(other, values))
    values[:, 3] = 0.0
    # ... and with it off, it does not.
    torch.testing.assert_close(model(ids, values), model(other, values), atol=1e-12, rtol=0)


@pytest.mark.parametrize("layout", ["one_column_per_field", "multi_slot"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ffm_equals_textbook_loop(layout: str, dtype: torch.dtype) -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES) if layout == "one_column_per_field" else None
    fmap = fmap or multi_slot_map()
    model = randomised(build_model("ffm", fmap, embed_dim=4).to(dtype))
    textbook = TextbookFFM.from_ffm(model)
    ids, values = random_batch(fmap, batch=32, seed=4, dtype=dtype)
    got, want = model(ids, values), textbook(ids, values)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    # The benchmark's other yardstick computes the same function.
    torch.testing.assert_close(OneGatherFFM(model)(ids, values), want, atol=tol, rtol=tol)
    # Same gradients too: the textbook table f is column block f of the vectorised table.
    got.sum().backward()
    want.sum().backward()
    k, nf = model.embed_dim, model.num_fields
    textbook_grad = torch.cat([t.weight.grad for t in textbook.embeddings], dim=1)
    assert textbook_grad.shape == (fmap.num_features, nf * k)
    torch.testing.assert_close(model.embedding.weight.grad, textbook_grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradcheck(name: str) -> None:
    fmap = multi_slot_map()
    extra = {"hash_bits": 4} if name == "poly2" else {}
    model = randomised(build_model(name, fmap, **{**HYPER[name], **extra}).double())
    ids, values = random_batch(fmap, batch=3, seed=5)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    values = values.clone().requires_grad_()

    def f(v: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return functional_call(model, dict(zip(names, ps, strict=True)), (ids, v))

    assert torch.autograd.gradcheck(f, (values, *params), eps=1e-6, atol=1e-5)


def test_ffm_pair_dots_gradcheck_with_non_symmetric_upstream() -> None:
    """The hand-written backward against finite differences, with ``G != G^T``."""
    from fm_spark.models.ffm import _PairDots

    v = torch.randn(2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 4, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: (_PairDots.apply(t) * weights).sum(), (v,))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_penalty_is_l2_on_touched_rows_and_sparse(name: str) -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    model = build_model(name, fmap, sparse=True, l2_linear=0.3, l2_embed=0.7, **HYPER[name])
    randomised(model)
    ids, values = random_batch(fmap, batch=6, seed=6, dtype=torch.float32)

    w = model.linear.weights.weight
    want = 0.3 * (w[ids] ** 2).sum()
    if name in ("fm", "ffm", "fwfm"):
        want = want + 0.7 * (model.embedding.weight[ids] ** 2).sum()
    elif name == "poly2":
        buckets = [
            poly2_hash(row[i], row[j], model.hash_bits)
            for row in ids.tolist()
            for i in range(len(row))
            for j in range(i + 1, len(row))
        ]
        want = want + 0.7 * (model.pair_weights.weight[buckets] ** 2).sum()
    penalty = model.penalty(ids)
    assert penalty.dim() == 0
    torch.testing.assert_close(penalty, want)

    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, values), torch.ones(6))
    (loss + penalty).backward()
    sparse = list(model.sparse_parameters())
    dense = list(model.dense_parameters())
    assert {id(p) for p in sparse} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in sparse} & {id(p) for p in dense}
    assert any(p is model.linear.weights.weight for p in sparse)
    assert any(p is model.linear.bias for p in dense)
    for p in sparse:
        assert p.grad is not None and p.grad.is_sparse
    touched = model.linear.weights.weight.grad.coalesce().indices()[0].unique()
    assert torch.equal(touched, ids.unique())
    for p in dense:
        assert p.grad is not None and not p.grad.is_sparse
    # A sparse optimiser accepts them as they are.
    torch.optim.SparseAdam(sparse, lr=0.01).step()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_dense_by_default_and_zero_penalty(name: str) -> None:
    model = build_model(name, FeatureMap.synthetic(FIELD_SIZES), **HYPER[name])
    assert list(model.sparse_parameters()) == []
    assert len(list(model.dense_parameters())) == len(list(model.parameters()))
    ids, _ = random_batch(FeatureMap.synthetic(FIELD_SIZES), batch=4, seed=7)
    assert model.penalty(ids).item() == 0.0


def test_fwfm_only_has_dense_field_pair_weights_besides_tables() -> None:
    fmap = multi_slot_map()
    model = build_model("fwfm", fmap, sparse=True)
    dense = dict(model.named_parameters())
    sparse_ids = {id(p) for p in model.sparse_parameters()}
    dense_names = sorted(n for n, p in dense.items() if id(p) not in sparse_ids)
    assert dense_names == ["field_pair_weights", "linear.bias"]
    assert model.field_pair_weights.shape == (fmap.num_fields * (fmap.num_fields + 1) // 2,)


def test_ffm_table_has_one_vector_per_feature_and_field() -> None:
    fmap = multi_slot_map()
    model = build_model("ffm", fmap, embed_dim=5)
    assert model.embedding.weight.shape == (fmap.num_features, fmap.num_fields * 5)
    assert model.column_fields.tolist() == [0, 1, 2, 1, 3, 1]
    assert "column_fields" in dict(model.named_buffers())


def test_build_model_errors() -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    with pytest.raises(ValueError, match=r"unknown model 'deepfm'.*lr, poly2, fm, ffm, fwfm"):
        build_model("deepfm", fmap)
    with pytest.raises(ValueError, match=r"'fm'.*embedding_dim.*accepts: .*embed_dim"):
        build_model("fm", fmap, embedding_dim=4)
    with pytest.raises(ValueError, match=r"'lr'.*embed_dim"):
        build_model("lr", fmap, embed_dim=4)
    with pytest.raises(ValueError, match=r"'ffm'.*hash_bits"):
        build_model("ffm", fmap, hash_bits=10)
    with pytest.raises(ValueError, match="embed_dim"):
        build_model("ffm", fmap, embed_dim=0)
    with pytest.raises(ValueError, match="hash_bits"):
        build_model("poly2", fmap, hash_bits=40)
    with pytest.raises(ValueError, match="l2_embed"):
        build_model("fm", fmap, l2_embed=-1.0)
    assert isinstance(build_model("FFM", fmap), MODELS["ffm"])
    model = build_model("fm", fmap)
    with pytest.raises(ValueError, match=r"ids must be \[batch, 5\]"):
        model(torch.zeros(2, 4, dtype=torch.long))


def test_build_model_defaults() -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    assert build_model("fm", fmap).embed_dim == 8
    assert build_model("poly2", fmap).pair_weights.num_embeddings == 2**18
    std = build_model("fm", FeatureMap.synthetic([20_000]), init_std=0.05).embedding.weight.std()
    assert 0.045 < std.item() < 0.055


def test_poly2_hash_is_pinned_and_portable() -> None:
    """Serving recomputes these buckets: the values are part of the model format."""
    a = torch.tensor([0, 1, 12345, 2**30, 40_000_000])
    b = torch.tensor([1, 0, 678, 7, 39_999_999])
    got = poly2_hash(a, b, 18)
    assert got.tolist() == [PINNED[(int(x), int(y))] for x, y in zip(a, b, strict=True)]
    assert [poly2_hash(int(x), int(y), 18) for x, y in zip(a, b, strict=True)] == got.tolist()
    assert poly2_hash(a.numpy(), b.numpy(), 18).tolist() == got.tolist()
    assert got.dtype == torch.int64


PINNED = {
    (0, 1): 158602,
    (1, 0): 46085,
    (12345, 678): 131999,
    (2**30, 7): 84682,
    (40_000_000, 39_999_999): 134926,
}


def test_poly2_model_buckets_equal_the_hash_for_large_ids() -> None:
    model = build_model("poly2", FeatureMap.synthetic([3, 3, 3]), hash_bits=20)
    ids = torch.tensor([[0, 2**31 - 2, 40_000_000], [2**30, 1, 2**31 - 3]])
    want = [
        [
            poly2_hash(row[0], row[1], 20),
            poly2_hash(row[0], row[2], 20),
            poly2_hash(row[1], row[2], 20),
        ]
        for row in ids.tolist()
    ]
    assert model.pair_buckets(ids).tolist() == want


def test_poly2_hash_spreads_pairs() -> None:
    rng = np.random.default_rng(0)
    bits = 12
    a = torch.from_numpy(rng.integers(0, 10**7, 20_000))
    b = torch.from_numpy(rng.integers(0, 10**7, 20_000))
    h = poly2_hash(a, b, bits)
    assert int(h.min()) >= 0 and int(h.max()) < 2**bits
    counts = torch.bincount(h, minlength=2**bits).double()
    assert counts.std() < 2 * counts.mean().sqrt()  # about Poisson, no hot buckets
    # Ids that agree modulo 2^bits must not share all their buckets.
    shifted = poly2_hash(a + 2**bits, b, bits)
    assert (shifted == h).float().mean() < 0.01
    assert (poly2_hash(b, a, bits) == h).float().mean() < 0.01  # order matters


def test_models_run_in_float32_with_float32_values() -> None:
    fmap = FeatureMap.synthetic(FIELD_SIZES)
    ids, values = random_batch(fmap, batch=5, seed=8, dtype=torch.float32)
    for name in MODEL_NAMES:
        out = build_model(name, fmap, **HYPER[name])(ids, values)
        assert out.shape == (5,) and out.dtype == torch.float32


@pytest.mark.parametrize("layout", ["one_column_per_field", "multi_slot"])
def test_ffm_cpu_kernel_equals_torch_ops(layout: str) -> None:
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: FFM runs on torch ops only")
    assert ffm_kernel.available(), "the FFM C++ kernel did not build"
    fmap = FeatureMap.synthetic(FIELD_SIZES) if layout == "one_column_per_field" else None
    fmap = fmap or multi_slot_map()
    model = randomised(build_model("ffm", fmap, embed_dim=3).double())
    ids, values = random_batch(fmap, batch=24, seed=6)
    values = values.clone().requires_grad_()
    got, want = model.interaction(ids, values), model.interaction_torch(ids, values)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    assert want.std() > 0.1
    weights = torch.randn(24, dtype=torch.float64)
    g_got = torch.autograd.grad((got * weights).sum(), [model.embedding.weight, values])
    g_want = torch.autograd.grad((want * weights).sum(), [model.embedding.weight, values])
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.fixture
def two_threads():
    """At least two intra-op threads, so the kernel's per-thread split runs on any machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(2, before))
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("embed_dim", [3, 4])
@pytest.mark.parametrize("layout", ["one_column_per_field", "multi_slot", "large_fields"])
def test_ffm_row_kernel_equals_torch_ops(layout: str, embed_dim: int, two_threads) -> None:
    """The in-place form training and evaluation use: rows by inverse, gradient per row.

    600 samples, so the backward splits them between threads; small fields give rows that
    every thread's samples use, large ones rows that only one thread's samples use (the two
    ways a row's gradient is accumulated); k = 3 takes the run-time-width loops, k = 4 the
    unrolled ones; some values are 0 (padding)."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler: FFM runs on torch ops only")
    fmap = {
        "one_column_per_field": lambda: FeatureMap.synthetic(FIELD_SIZES),
        "multi_slot": multi_slot_map,
        "large_fields": lambda: FeatureMap.synthetic([3, 400, 50, 2_000, 8]),
    }[layout]()
    model = randomised(build_model("ffm", fmap, embed_dim=embed_dim).double())
    ids, values = random_batch(fmap, batch=600, seed=7)
    values[::7, 1] = 0.0
    values = values.clone().requires_grad_()
    unique, inverse = torch.unique(ids, return_inverse=True)
    rows = model.embedding.weight.detach()[unique].clone().requires_grad_()
    cf, k = model.column_fields, embed_dim
    got = ffm_kernel.pair_interaction_rows(rows, inverse, values, cf, k)
    want = model.interaction_torch(ids, values)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    with torch.no_grad():  # evaluation reads the table itself by id
        torch.testing.assert_close(model.interaction(ids, values), want, atol=1e-10, rtol=1e-10)
    weights = torch.randn(600, dtype=torch.float64)
    d_rows, d_values = torch.autograd.grad((got * weights).sum(), [rows, values])
    d_table, d_values_want = torch.autograd.grad(
        (want * weights).sum(), [model.embedding.weight, values]
    )
    torch.testing.assert_close(d_rows, d_table[unique], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(d_values, d_values_want, atol=1e-10, rtol=1e-10)
    assert float(d_rows.abs().max()) > 0.1
    with pytest.raises(RuntimeError, match="out of range"):
        ffm_kernel.pair_interaction_rows(rows.detach(), inverse + len(unique), values, cf, k)
