"""Featurized datasets written straight from a planted FM, without Spark.

Training tests and the training benchmark need field-indexed Parquet of a chosen size, shape
(files, row groups) and known truth, fast and without a Spark job in the way. This writes the
same layout the feature job does (``train``/``valid``/``test`` Parquet folders with
``_SUCCESS``, ``feature_map.json``, a top-level ``_SUCCESS``) from a planted factorization
machine, and returns the planted model's own ("oracle") AUC on each split: the best any
trained model can expect on average.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.metrics import roc_auc

__all__ = ["write_planted_dataset"]

SPLITS = ("train", "valid", "test")


def _zipf_ids(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """Local ids in ``[0, size)`` with Zipf-like frequencies, as categorical logs have."""
    probs = 1.0 / np.arange(1, size + 1) ** 1.1
    return rng.choice(size, size=rows, p=probs / probs.sum()).astype(np.int32)


def _planted_logits(ids: np.ndarray, linear: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """FM logits without bias, in chunks so a million-row split needs no [rows, C, k] array."""
    out = np.empty(ids.shape[0])
    for lo in range(0, ids.shape[0], 100_000):
        chunk = ids[lo : lo + 100_000]
        v = factors[chunk]  # [rows, C, k]
        pair = 0.5 * (v.sum(axis=1) ** 2 - (v**2).sum(axis=1)).sum(axis=1)
        out[lo : lo + 100_000] = linear[chunk].sum(axis=1) + pair
    return out


def write_planted_dataset(
    output: str | Path,
    *,
    rows: dict[str, int],
    field_sizes: list[int] | None = None,
    embed_dim: int = 2,
    interaction_scale: float = 0.7,
    linear_scale: float = 0.3,
    files_per_split: int = 2,
    row_group_rows: int = 5_000,
    row_group_sizes: list[int] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Write a featurized dataset drawn from a planted FM; return the oracle AUC per split.

    ``row_group_sizes`` (train split only) writes one file per listed size, each a single row
    group, to build deliberately uneven shards; otherwise each split is ``files_per_split``
    files with row groups of ``row_group_rows``. Interactions dominate the planted logit
    (``interaction_scale`` vs ``linear_scale``), so a model without them is clearly worse.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    # Small fields: tests train on a few 10k rows, and FFM's (fields - 1) x k parameters per
    # feature need each value seen often enough to be learned, not just memorised.
    sizes = field_sizes or [6, 10, 8, 12, 5, 6, 10, 8]
    fmap = FeatureMap.synthetic(sizes, dataset="planted")
    rng = np.random.default_rng(seed)
    n = fmap.num_features
    linear = rng.normal(0.0, linear_scale, n)
    factors = rng.normal(0.0, interaction_scale / np.sqrt(embed_dim), (n, embed_dim))
    offsets = np.array(fmap.field_offsets, dtype=np.int32)
    oracle: dict[str, float] = {}
    bias = None
    for split in SPLITS:
        count = rows[split]
        local = np.stack([_zipf_ids(rng, count, s) for s in sizes], axis=1)
        ids = local + offsets
        z = _planted_logits(ids, linear, factors)
        if bias is None:  # aim at a 25% click rate, as display-ads logs roughly have
            bias = float(np.log(0.25 / 0.75) - np.median(z))
        p = 1.0 / (1.0 + np.exp(-(z + bias)))
        label = (rng.random(count) < p).astype(np.float32)
        oracle[split] = roc_auc(label, p)
        table = pa.table(
            {"label": label, **{c: ids[:, i] for i, c in enumerate(fmap.column_names)}}
        )
        _write_split(
            out / split,
            table,
            files_per_split,
            row_group_rows,
            row_group_sizes if split == "train" else None,
        )
    fmap.save(out)
    (out / "_SUCCESS").touch()
    return oracle


def _write_split(
    directory: Path,
    table: pa.Table,
    files: int,
    row_group_rows: int,
    row_group_sizes: list[int] | None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if row_group_sizes:
        bounds = np.cumsum([0, *row_group_sizes])
        if bounds[-1] != table.num_rows:
            raise ValueError(f"row_group_sizes sum to {bounds[-1]}, the split has {table.num_rows}")
        chunks = [(int(a), int(b - a), int(b - a)) for a, b in itertools.pairwise(bounds)]
    else:
        step = -(-table.num_rows // files)
        chunks = [(a, step, row_group_rows) for a in range(0, table.num_rows, step)]
    for i, (start, length, group) in enumerate(chunks):
        pq.write_table(
            table.slice(start, length),
            directory / f"part-{i:05d}.parquet",
            row_group_size=max(1, group),
        )
    (directory / "_SUCCESS").touch()
