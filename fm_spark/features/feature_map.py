"""The feature map: the contract between the feature job, the models, training and serving.

It is written once by the Spark feature job (``DIR/feature_map.json``) and read by everything
downstream. It holds all that is needed to turn one more raw row into the same ids later,
without Spark: per-field encodings, sizes, offsets, hash seeds and where the vocabularies and
bin edges are stored.

Ids are *global*: a field's local id plus the field's offset, so a model sees ids in
``[0, num_features)`` and needs one embedding table.

A field usually fills one input *column*; a multi-valued categorical field fills
``max_values`` columns (slots), all belonging to the same logical field. Models therefore take
``ids``/``values`` of shape ``[batch, num_columns]`` and use ``column_fields`` to know which
logical field each column belongs to (FFM and FwFM need that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1
FEATURE_MAP_FILE = "feature_map.json"

# Local id layout shared by every encoding (see README, "Id layout").
MISSING_ID = 0  # value absent / empty (also the padding slot of a multi-valued field)
UNSEEN_ID = 1  # vocabulary encodings: a value never seen in the training split
RARE_ID = 2  # vocabulary encodings: a value seen fewer than min_count times
VOCAB_FIRST_ID = 3  # vocabulary encodings: first id of a kept value
HASH_FIRST_ID = 1  # hashed encodings: bucket b has local id 1 + b
BIN_FIRST_ID = 1  # quantile bins: bin b has local id 1 + b
VALUE_PRESENT_ID = 1  # numeric kept as a value: id 1 carries the value, id 0 means missing


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnInfo(_Frozen):
    """One int32 id column of the Parquet output (and optionally its float32 value column)."""

    name: str
    field: str
    value_column: str | None = None


class FieldInfo(_Frozen):
    """How one logical field was encoded, with everything a serving encoder needs."""

    name: str
    source: str
    kind: Literal["categorical", "numeric", "multi_categorical"]
    encoding: Literal["vocab", "hash", "log_bins", "quantile_bins", "value"]
    transform: str = "none"
    offset: int
    size: int
    columns: list[str]
    # vocab (and log_bins, which vocab-index the bin token)
    min_count: int | None = None
    vocab_path: str | None = None  # relative to the feature map's directory
    # hash
    num_buckets: int | None = None
    hash_salt: str | None = None
    # quantile_bins
    bin_edges: list[float] | None = None
    # multi_categorical
    separator: str | None = None
    max_values: int | None = None


class SplitStats(_Frozen):
    rows: int
    positives: int
    positive_rate: float


class FeatureMap(_Frozen):
    schema_version: int = SCHEMA_VERSION
    dataset: str
    label_column: str = "label"
    fields: list[FieldInfo]
    columns: list[ColumnInfo]
    num_features: int
    hash_seed: int = 42  # Spark's xxhash64 seed; parity with xxhash.xxh64(seed=42)
    config_hash: str
    splits: dict[str, SplitStats] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)

    # -- what models need -------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_columns(self) -> int:
        return len(self.columns)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> list[str | None]:
        return [c.value_column for c in self.columns]

    @property
    def column_fields(self) -> list[int]:
        """Logical field index of each column, in column order."""
        index = {f.name: i for i, f in enumerate(self.fields)}
        return [index[c.field] for c in self.columns]

    @property
    def field_offsets(self) -> list[int]:
        return [f.offset for f in self.fields]

    @property
    def field_sizes(self) -> list[int]:
        return [f.size for f in self.fields]

    # -- persistence ---------------------------------------------------------------------
    def to_json(self) -> str:
        """Canonical, byte-stable JSON: the same map always serialises to the same bytes."""
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FEATURE_MAP_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory_or_file: str | Path) -> FeatureMap:
        path = Path(directory_or_file)
        if path.is_dir():
            path = path / FEATURE_MAP_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"no feature map at {path}: is this the output directory of `fm-spark featurize`?"
            )
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: feature map schema version {version!r}, this fm-spark reads "
                f"version {SCHEMA_VERSION}; re-run `fm-spark featurize` with this version"
            )
        return cls.model_validate(data)

    @classmethod
    def synthetic(cls, field_sizes: list[int], dataset: str = "synthetic") -> FeatureMap:
        """A map for tests and benchmarks: one single-column field per size, no files behind it."""
        fields, columns, offset = [], [], 0
        for i, size in enumerate(field_sizes):
            name = f"f{i}"
            fields.append(
                FieldInfo(
                    name=name,
                    source=name,
                    kind="categorical",
                    encoding="hash",
                    offset=offset,
                    size=size,
                    columns=[name],
                    num_buckets=size - HASH_FIRST_ID,
                    hash_salt=name,
                )
            )
            columns.append(ColumnInfo(name=name, field=name))
            offset += size
        return cls(
            dataset=dataset,
            fields=fields,
            columns=columns,
            num_features=offset,
            config_hash="synthetic",
        )
