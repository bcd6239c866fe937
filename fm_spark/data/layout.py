"""What a split looks like before any row is read: row groups, shards, schema, id ranges.

Everything here comes from Parquet footers (no data pages), so it is cheap enough to run on
the driver before training starts, and a bad directory is refused in a second instead of
minutes into a distributed launch.

Petastorm shards by *row group* (row group ``i`` goes to shard ``i % shard_count``), so shards
hold different numbers of rows. Distributed training needs every worker to take the same
number of optimizer steps per epoch (DDP's all-reduce would otherwise wait forever for a
worker that ran out of data): :func:`steps_per_epoch` computes that common number.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from fm_spark.data.petastorm_fixes import quiet_petastorm_warnings
from fm_spark.features.feature_map import FeatureMap

__all__ = ["DataError", "SplitLayout", "check_schema", "split_layout", "steps_per_epoch"]


class DataError(ValueError):
    """Data that cannot be trained on as it is; the message says what to change."""


@dataclass(frozen=True)
class SplitLayout:
    """The row groups of one split, in the order Petastorm numbers them for sharding."""

    url: str
    row_group_rows: tuple[int, ...]
    # One Arrow schema per Parquet file, with the file's path, for the schema check.
    file_schemas: tuple[tuple[str, pa.Schema], ...]
    # Per id column: (min, max, null_count) over the row groups that carry statistics.
    id_stats: dict[str, tuple[int | None, int | None, int]]

    @property
    def rows(self) -> int:
        return sum(self.row_group_rows)

    @property
    def num_row_groups(self) -> int:
        return len(self.row_group_rows)

    def shard_rows(self, shard_count: int) -> list[int]:
        """Rows per shard: Petastorm gives row group ``i`` to shard ``i % shard_count``."""
        out = [0] * shard_count
        for i, rows in enumerate(self.row_group_rows):
            out[i % shard_count] += rows
        return out


def split_layout(url: str, id_columns: list[str] | None = None) -> SplitLayout:
    """Read the footers of a split's Parquet files (no data) the way Petastorm lists them.

    Uses Petastorm's own filesystem resolution and row-group enumeration, so the shard
    arithmetic here matches what each worker's reader will actually read, on any filesystem
    Petastorm supports (``file://``, ``hdfs://``, ...).
    """
    import pyarrow.parquet as pq
    from petastorm.etl import dataset_metadata
    from petastorm.fs_utils import get_filesystem_and_path_or_paths

    quiet_petastorm_warnings()
    fs, path = get_filesystem_and_path_or_paths(url)
    try:
        dataset = pq.ParquetDataset(
            path, filesystem=fs, validate_schema=False, metadata_nthreads=10
        )
        pieces = dataset_metadata.load_row_groups(dataset)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read Parquet at {url}: {exc}") from None
    footers: dict[str, pq.FileMetaData] = {}
    rows: list[int] = []
    stats: dict[str, list[int]] = {c: [] for c in id_columns or []}
    mins: dict[str, int | None] = dict.fromkeys(stats)
    maxs: dict[str, int | None] = dict.fromkeys(stats)
    nulls: dict[str, int] = dict.fromkeys(stats, 0)
    for piece in pieces:
        meta = footers.get(piece.path)
        if meta is None:
            with fs.open(piece.path, "rb") as handle:
                meta = pq.ParquetFile(handle).metadata
            footers[piece.path] = meta
        group = meta.row_group(piece.row_group)
        rows.append(group.num_rows)
        for j in range(group.num_columns):
            chunk = group.column(j)
            name = chunk.path_in_schema
            if name not in stats or chunk.statistics is None:
                continue
            st = chunk.statistics
            nulls[name] += st.null_count or 0
            if st.has_min_max:
                mins[name] = st.min if mins[name] is None else min(mins[name], st.min)
                maxs[name] = st.max if maxs[name] is None else max(maxs[name], st.max)
    schemas = tuple((p, m.schema.to_arrow_schema()) for p, m in footers.items())
    return SplitLayout(
        url=url,
        row_group_rows=tuple(rows),
        file_schemas=schemas,
        id_stats={c: (mins[c], maxs[c], nulls[c]) for c in stats},
    )


def steps_per_epoch(layout: SplitLayout, batch_size: int, world_size: int) -> int:
    """Optimizer steps every worker takes per epoch: ``min`` over shards of ``rows // batch``.

    Equal steps keep DDP's collectives in lockstep however uneven the shards are. Workers with
    bigger shards leave their surplus rows out of that epoch; which rows that is changes from
    epoch to epoch, because the row-group order and the shuffle do. A shard too small for one
    batch would make every worker skip the epoch, so that is an error, never a silent zero.
    """
    if layout.num_row_groups == 0:
        raise DataError(f"{layout.url} holds no rows")
    if layout.num_row_groups < world_size:
        raise DataError(
            f"{layout.url} has {layout.num_row_groups} row group(s) but training asks for "
            f"{world_size} workers; each worker reads whole row groups, so use at most "
            f"{layout.num_row_groups} workers (--workers) or re-run featurize with a smaller "
            "output.row_group_rows / output.rows_per_file so the split has more row groups"
        )
    shards = layout.shard_rows(world_size)
    smallest = min(range(world_size), key=lambda s: shards[s])
    steps = shards[smallest] // batch_size
    if steps == 0:
        raise DataError(
            f"worker {smallest} of {world_size} gets {shards[smallest]} rows of {layout.url}, "
            f"fewer than one batch of {batch_size}: lower train.batch_size, use fewer workers, "
            "or write smaller row groups (output.row_group_rows) so shards balance"
        )
    return steps


def check_schema(layout: SplitLayout, feature_map: FeatureMap, split: str) -> None:
    """Refuse a split whose Parquet does not match the feature map, naming what differs.

    Checks every file's schema (label and value columns floating point, id columns integer)
    and, from the footers' statistics, that ids lie in ``[0, num_features)`` and are never
    null: a feature map from another featurize run shows up here instead of as an
    index error deep inside an embedding lookup.
    """
    expected: dict[str, str] = {feature_map.label_column: "float"}
    for col in feature_map.columns:
        expected[col.name] = "int"
        if col.value_column:
            expected[col.value_column] = "float"
    for path, schema in layout.file_schemas:
        problems = []
        for name, kind in expected.items():
            idx = schema.get_field_index(name)
            if idx < 0:
                problems.append(f"missing column {name!r}")
                continue
            typ = schema.field(idx).type
            ok = pa.types.is_integer(typ) if kind == "int" else pa.types.is_floating(typ)
            if not ok:
                problems.append(f"column {name!r} is {typ}, expected {kind}")
        if problems:
            shown = "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else "")
            raise DataError(
                f"{split} split file {path} does not match feature_map.json: {shown}. "
                "Was this directory written by `fm-spark featurize` with the same config?"
            )
    n = feature_map.num_features
    for name, (lo, hi, nulls) in layout.id_stats.items():
        if nulls:
            raise DataError(f"{split} split: id column {name!r} has {nulls} null value(s)")
        if (lo is not None and lo < 0) or (hi is not None and hi >= n):
            raise DataError(
                f"{split} split: id column {name!r} holds ids in [{lo}, {hi}] but the feature "
                f"map has {n} features: the Parquet and feature_map.json come from different "
                "featurize runs"
            )
