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

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fm_spark.config import InputSpec, LabelSpec, SplitSpec
from fm_spark.features.spec import (  # noqa: F401  (the id layout, re-exported)
    BIN_FIRST_ID,
    HASH_FIRST_ID,
    HASH_SEED,
    MISSING_ID,
    RARE_ID,
    UNSEEN_ID,
    VALUE_PRESENT_ID,
    VOCAB_FIRST_ID,
)

# v2: dtype, input, label and split are typed (v1 kept them in ``extra``); fingerprints.
SCHEMA_VERSION = 2
FEATURE_MAP_FILE = "feature_map.json"


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnInfo(_Frozen):
    """One int32 id column of the Parquet output (and optionally its float32 value column)."""

    name: str
    field: str
    value_column: str | None = None


class FieldInfo(_Frozen):
    """How one logical field was encoded, with everything a serving encoder needs.

    ``fingerprint`` is a digest of the field's fitted state (its params, size, bin edges, the
    digest of its vocabulary), filled in when the map is built and checked when it is read:
    training and serving compare it to know that Parquet, map and model belong together.
    """

    name: str
    source: str
    kind: Literal["categorical", "numeric", "multi_categorical"]
    encoding: str
    transform: str = "none"
    # how the raw value parses: "string" for categorical kinds, "int"/"float" for numeric
    dtype: Literal["string", "int", "float"] = "string"
    offset: int
    size: int
    columns: list[str]
    # vocab (and log_bins, which vocab-index the bin token)
    min_count: int | None = None
    vocab_path: str | None = None  # relative to the feature map's directory
    # xor of xxhash64(token || U+0001 || id) over the vocabulary (16 hex digits)
    vocab_digest: str | None = None
    # hash
    num_buckets: int | None = None
    hash_salt: str | None = None
    # quantile_bins
    num_bins: int | None = None
    bin_edges: list[float] | None = None
    # multi_categorical
    separator: str | None = None
    max_values: int | None = None
    fingerprint: str = ""

    @model_validator(mode="after")
    def _fingerprinted(self) -> FieldInfo:
        expected = self.fitted_fingerprint()
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", expected)
        elif self.fingerprint != expected:
            raise ValueError(
                f"field {self.name!r}: fingerprint {self.fingerprint} does not match its "
                f"fitted state ({expected}): the feature map was edited; re-run featurize"
            )
        return self

    def fitted_fingerprint(self) -> str:
        """The digest of everything that decides this field's local ids (not its place)."""
        skip = {"fingerprint", "offset", "columns", "vocab_path"}
        return _digest(self.model_dump(mode="json", exclude=skip))


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
    hash_seed: int = HASH_SEED  # Spark's xxhash64 seed; parity with xxhash.xxh64(seed=42)
    config_hash: str
    splits: dict[str, SplitStats] = Field(default_factory=dict)
    # How raw rows are read and labelled (the serving encoder parses them the same way);
    # None only in synthetic maps, which have no raw rows behind them.
    input: InputSpec | None = None
    label: LabelSpec | None = None
    split: SplitSpec | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # free-form notes, read by nobody

    @property
    def fingerprint(self) -> str:
        """A digest of the id layout and every field's fitted state: equal fingerprints mean
        the same raw row gets the same ids (the config hash and split stats do not count)."""
        return _digest(
            {
                "num_features": self.num_features,
                "hash_seed": self.hash_seed,
                "label_column": self.label_column,
                "columns": [c.model_dump(mode="json") for c in self.columns],
                "fields": [[f.name, f.offset, f.columns, f.fingerprint] for f in self.fields],
            }
        )

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
        return cls.parse(path.read_text(encoding="utf-8"), str(path))

    @classmethod
    def parse(cls, text: str, where: str) -> FeatureMap:
        """Validate a feature map's JSON, refusing other schema versions."""
        data = json.loads(text)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"{where}: feature map schema version {version!r}, this fm-spark reads "
                f"version {SCHEMA_VERSION}; re-run `fm-spark featurize` with this version to "
                f"rewrite the dataset"
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
