"""The Petastorm data path: shard arithmetic, the schema check, packed batches, no early ends."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fm_spark.data.reader import (
    DataError,
    check_schema,
    dataset_url,
    open_batches,
    petastorm_seed,
    split_layout,
    steps_per_epoch,
)
from fm_spark.datagen import write_planted_dataset
from fm_spark.features.feature_map import ColumnInfo, FeatureMap


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 row groups in 3 files: 3 shards of 6, 6 and 6 row groups but unequal rows."""
    out = tmp_path_factory.mktemp("small")
    write_planted_dataset(
        out,
        rows={"train": 5_000, "valid": 1_000, "test": 1_000},
        files_per_split=3,
        row_group_rows=300,
        seed=2,
    )
    return out


def _rows_read(url: str, fmap: FeatureMap, **kw) -> int:
    with open_batches(url, fmap, batch_size=128, **kw) as batches:
        return sum(int(b.label.shape[0]) for b in batches)


def test_url_for_local_paths_and_pass_through(tmp_path: Path) -> None:
    assert dataset_url(tmp_path) == f"file://{tmp_path.resolve()}"
    assert dataset_url("hdfs://nn:8020/data/x/") == "hdfs://nn:8020/data/x"


def test_a_folder_with_plus_and_space_in_its_name_reads(small: Path, tmp_path: Path) -> None:
    """as_uri() would write '%2B' / '%20', which Petastorm does not decode: "no such path"."""
    import shutil

    odd = tmp_path / "run+1 copy"
    shutil.copytree(small, odd)
    fmap = FeatureMap.load(odd)
    layout = split_layout(dataset_url(odd / "train"), fmap.column_names)
    assert layout.rows == 5_000
    assert _rows_read(layout.url, fmap) == 5_000


def test_petastorm_seed_is_never_zero() -> None:
    seeds = {petastorm_seed(s, e) for s in range(50) for e in range(20)}
    assert 0 not in seeds
    assert len(seeds) == 1000


def test_shard_rows_from_footers_match_what_each_shard_reads(small: Path) -> None:
    fmap = FeatureMap.load(small)
    layout = split_layout(dataset_url(small / "train"), fmap.column_names)
    assert layout.rows == 5_000
    assert layout.num_row_groups == 18
    for shards in (1, 2, 3, 4):
        expected = layout.shard_rows(shards)
        assert sum(expected) == 5_000
        got = [
            _rows_read(
                layout.url,
                fmap,
                shuffle=True,
                seed=7,
                shuffle_buffer=500,
                cur_shard=s,
                shard_count=shards,
            )
            for s in range(shards)
        ]
        assert got == expected


def test_thread_pool_never_ends_a_pass_early(small: Path) -> None:
    """Petastorm 0.13.1's thread pool could end small shards' passes with 0 rows (a race)."""
    fmap = FeatureMap.load(small)
    layout = split_layout(dataset_url(small / "train"), fmap.column_names)
    expected = layout.shard_rows(6)  # 3 row groups per shard: the racy case
    for _ in range(8):
        for shard in range(6):
            got = _rows_read(
                layout.url,
                fmap,
                shuffle=True,
                seed=3,
                shuffle_buffer=200,
                cur_shard=shard,
                shard_count=6,
                pool="thread",
                workers=2,
            )
            assert got == expected[shard]


def test_steps_per_epoch_is_the_smallest_shard() -> None:
    from fm_spark.data.reader import SplitLayout

    layout = SplitLayout("file:///x", (30_000, 2_000, 3_000, 1_000), (), {})
    assert layout.shard_rows(2) == [33_000, 3_000]
    assert steps_per_epoch(layout, 256, 2) == 3_000 // 256
    assert steps_per_epoch(layout, 256, 1) == 36_000 // 256
    with pytest.raises(DataError, match=r"4 row group\(s\) but .* 5 workers.*row_group_rows"):
        steps_per_epoch(layout, 256, 5)
    with pytest.raises(DataError, match="fewer than one batch"):
        steps_per_epoch(layout, 4_096, 2)


def test_batches_are_packed_shuffled_and_repeatable(small: Path) -> None:
    fmap = FeatureMap.load(small)
    url = dataset_url(small / "train")

    def pass_ids(pool: str, workers: int = 2) -> torch.Tensor:
        torch.manual_seed(int(torch.randint(0, 1000, ())))  # the global RNG plays no part
        with open_batches(
            url, fmap, batch_size=256, shuffle=True, seed=11, shuffle_buffer=1_000, pool=pool,
            workers=workers,
        ) as batches:  # fmt: skip
            out = list(batches)
        first = out[0]
        assert first.ids.dtype == torch.int64 and first.ids.shape == (256, fmap.num_columns)
        assert first.label.dtype == torch.float32 and first.label.shape == (256,)
        assert first.values is None  # no value columns in this feature map
        return torch.cat([b.ids for b in out])

    dummy = pass_ids("dummy")
    # The thread pool hands row groups over in ventilation order (see petastorm_fixes), so
    # a seeded pass is the same batches whatever the number of reader threads.
    for workers in (1, 2, 3, 2, 3):
        assert torch.equal(pass_ids("thread", workers), dummy)
    table = pq.read_table(small / "train")
    rows = torch.from_numpy(np.stack([table[c].to_numpy() for c in fmap.column_names], 1)).long()
    assert not torch.equal(dummy, rows)  # shuffled ...
    assert torch.equal(dummy.sort(dim=0).values, rows.sort(dim=0).values)  # ... not changed


def test_leaving_early_stops_every_thread(small: Path) -> None:
    import threading

    fmap = FeatureMap.load(small)
    before = set(threading.enumerate())
    for prefetch in (0, 3):
        with open_batches(
            dataset_url(small / "train"), fmap, batch_size=64, shuffle=True, seed=1,
            shuffle_buffer=100, prefetch=prefetch,
        ) as batches:  # fmt: skip
            next(batches)
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []


def test_prefetcher_hands_over_errors_and_stops() -> None:
    from fm_spark.data.prefetch import Prefetcher

    def source():
        yield 1
        yield 2
        raise RuntimeError("boom")

    it = Prefetcher(source(), depth=1)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        next(it)
    it.close()
    endless = Prefetcher(iter(range(10**9)), depth=2)
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()


def test_value_columns_are_packed_in_column_order(tmp_path: Path) -> None:
    base = FeatureMap.synthetic([5, 5, 5])
    columns = [
        ColumnInfo(name="f0", field="f0"),
        ColumnInfo(name="f1", field="f1", value_column="f1_value"),
        ColumnInfo(name="f2", field="f2"),
    ]
    fmap = base.model_copy(update={"columns": columns})
    n = 1_000
    table = pa.table(
        {
            "label": np.zeros(n, np.float32),
            "f0": np.zeros(n, np.int32),
            "f1": np.full(n, 5, np.int32),
            "f2": np.full(n, 10, np.int32),
            "f1_value": np.arange(n, dtype=np.float32),
            "ignored": np.ones(n, np.int64),
        }
    )
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-0.parquet", row_group_size=250)
    layout = split_layout(dataset_url(tmp_path / "train"), fmap.column_names)
    check_schema(layout, fmap, "train")
    with open_batches(layout.url, fmap, batch_size=n) as batches:
        batch = next(batches)
    assert batch.values is not None
    assert torch.equal(batch.values[:, 0], torch.ones(n))
    assert torch.equal(batch.values[:, 1], torch.arange(n, dtype=torch.float32))
    assert torch.equal(batch.ids[0], torch.tensor([0, 5, 10]))


def _write(directory: Path, table: pa.Table) -> str:
    directory.mkdir(parents=True)
    pq.write_table(table, directory / "part-0.parquet")
    return dataset_url(directory)


def test_schema_check_names_what_differs(tmp_path: Path) -> None:
    fmap = FeatureMap.synthetic([5, 5])
    good = {
        "label": np.zeros(4, np.float32),
        "f0": np.zeros(4, np.int32),
        "f1": np.full(4, 5, np.int32),
    }
    cases = {
        "missing": ({k: v for k, v in good.items() if k != "f1"}, "missing column 'f1'"),
        "type": ({**good, "f0": np.zeros(4, np.float32)}, "column 'f0' is float, expected int"),
        "range": ({**good, "f1": np.full(4, 10, np.int32)}, r"ids in \[10, 10\].*10 features"),
    }
    for name, (cols, message) in cases.items():
        layout = split_layout(_write(tmp_path / name, pa.table(cols)), fmap.column_names)
        with pytest.raises(DataError, match=message):
            check_schema(layout, fmap, "train")


def test_petastorm_deprecation_warnings_are_filtered(small: Path) -> None:
    fmap = FeatureMap.load(small)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        from fm_spark.data.reader import quiet_petastorm_warnings

        quiet_petastorm_warnings()
        _rows_read(dataset_url(small / "valid"), fmap)
    noisy = [w for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert noisy == []
