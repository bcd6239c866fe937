"""The shape every encoding has: params declared once, two executors side by side.

An :class:`Encoding` subclass is one encoding (``vocab``, ``hash``...). It declares its
:class:`Param` s (name, type, doc, default, check, in the manner of Spark ML's ``Params``);
the config's ``FieldSpec`` and ``encoding:`` defaults are generated from them. An instance is
one field with its resolved params (:class:`FieldDef`) and, once fitted, its fitted state; it
converts to and from the feature map's ``FieldInfo``, fits and encodes in Spark (pyspark is
imported inside those methods only) and encodes in numpy for serving.

Fitted state and params are stored in ``FieldInfo`` entries of the same names, so the
conversion is written once here; an encoding only names what it fitted (:attr:`fitted_keys`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from fm_spark.features.encodings.numbers import Numbers

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from fm_spark.config import EncodingDefaults, FieldSpec
    from fm_spark.features.feature_map import ColumnInfo, FieldInfo

__all__ = ["TMP_PREFIX", "Encoding", "FieldDef", "FieldInput", "FitContext", "Param"]

TMP_PREFIX = "__fm_"  # prefix of the temporary columns a Spark transform adds (and drops)


@dataclass(frozen=True)
class Param:
    """One encoding parameter, declared once: the config, its validation, the defaults and the
    README read it from here.

    ``shared``: the default lives in the config's ``encoding:`` section (one value for all
    fields, overridable per field); otherwise ``default`` applies (None: required).
    ``constraints``: pydantic ``Field`` constraints (``gt``, ``ge``...), checked on load.
    """

    name: str
    type: type
    doc: str
    default: Any = None
    shared: bool = False
    constraints: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldDef:
    """A field as configured, with every param its encoding uses resolved."""

    name: str
    source: str
    kind: str
    encoding: str
    transform: str = "none"
    dtype: str = "string"  # "string" for categorical kinds, "int"/"float" for numeric
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        return self.kind == "multi_categorical"

    @property
    def max_values(self) -> int:
        return int(self.params.get("max_values") or 1)

    @property
    def separator(self) -> str:
        return str(self.params.get("separator") or "")

    @property
    def column_names(self) -> list[str]:
        if self.multi:
            return [f"{self.name}_{k}" for k in range(self.max_values)]
        return [self.name]


@dataclass(frozen=True)
class FitContext:
    """Where a Spark fit writes its artifacts: ``root`` (a Hadoop path) through ``fs``
    (:class:`fm_spark.features.io.HadoopFS`)."""

    root: str
    fs: Any
    quantile_relative_error: float = 0.001


@dataclass
class FieldInput:
    """What a numpy ``encode`` reads: the (transformed) raw strings of the field's source
    (an object array, None = missing; a Series works too) and, for numeric fields, their
    parsed numbers. The serving encoder hands over plain arrays: pandas per field would cost
    more than the encoding itself on a one-row request."""

    raw: np.ndarray | pd.Series
    num: Numbers | None = None


class Encoding:
    """Base of every encoding. Subclasses set the class attributes and override the Spark and
    numpy methods they need; see :mod:`fm_spark.features.encodings` for the registry."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the README's table of encodings
    ids: ClassVar[str]  # the local id layout, for the README's table
    kinds: ClassVar[tuple[str, ...]]
    params: ClassVar[tuple[Param, ...]] = ()
    fitted_keys: ClassVar[tuple[str, ...]] = ()  # FieldInfo entries holding fitted state
    fit_group: ClassVar[str | None] = None  # encodings of one group are fitted in one pass

    def __init__(self, fdef: FieldDef, fitted: Mapping[str, Any] | None = None) -> None:
        self.field = fdef
        self.fitted: dict[str, Any] = dict(fitted or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.field.name!r})"

    # -- params and config ------------------------------------------------------------------
    @classmethod
    def params_for(cls, kind: str) -> tuple[Param, ...]:
        from fm_spark.features.encodings.modifiers import MULTI_PARAMS

        return cls.params + (MULTI_PARAMS if kind == "multi_categorical" else ())

    @classmethod
    def resolve(cls, spec: FieldSpec, defaults: EncodingDefaults) -> FieldDef:
        """The field with every param set: its own value, else the config's shared default,
        else the param's default."""
        values: dict[str, Any] = {}
        for p in cls.params_for(spec.kind):
            v = getattr(spec, p.name)
            if v is None:
                v = getattr(defaults, p.name) if p.shared else p.default
            if v is None:
                raise ValueError(f"field {spec.name!r}: encoding {cls.name} needs `{p.name}`")
            values[p.name] = v
        return FieldDef(
            name=spec.name,
            source=spec.input_column,
            kind=spec.kind,
            encoding=cls.name,
            transform=spec.transform,
            dtype=spec.dtype if spec.kind == "numeric" else "string",
            params=values,
        )

    # -- size, columns, FieldInfo -----------------------------------------------------------
    @property
    def size(self) -> int:
        """Number of local ids (the field's slice of the embedding table)."""
        raise NotImplementedError

    def value_column(self, column: str) -> str | None:
        """The float value column beside an id column, if this encoding writes one."""
        return f"{column}__value" if self.field.multi else None

    def info(self, offset: int) -> FieldInfo:
        from fm_spark.features.feature_map import FieldInfo

        f = self.field
        return FieldInfo(
            name=f.name,
            source=f.source,
            kind=f.kind,  # type: ignore[arg-type]
            encoding=f.encoding,
            transform=f.transform,
            dtype=f.dtype,  # type: ignore[arg-type]
            offset=offset,
            size=self.size,
            columns=f.column_names,
            **dict(f.params),
            **{k: self.fitted[k] for k in self.fitted_keys},
        )

    def column_infos(self) -> list[ColumnInfo]:
        from fm_spark.features.feature_map import ColumnInfo

        return [
            ColumnInfo(name=c, field=self.field.name, value_column=self.value_column(c))
            for c in self.field.column_names
        ]

    @classmethod
    def from_info(cls, info: FieldInfo) -> Encoding:
        """The fitted encoding a feature map describes (checked against its size)."""
        fdef = FieldDef(
            name=info.name,
            source=info.source,
            kind=info.kind,
            encoding=info.encoding,
            transform=info.transform,
            dtype=info.dtype,
            params={p.name: getattr(info, p.name) for p in cls.params_for(info.kind)},
        )
        enc = cls(fdef, cls.fitted_from_info(info))
        if enc.size != info.size:
            raise ValueError(f"feature map field {info.name}: size {info.size} != {enc.size}")
        return enc

    @classmethod
    def fitted_from_info(cls, info: FieldInfo) -> dict[str, Any]:
        return {k: getattr(info, k) for k in cls.fitted_keys}

    # -- Spark -------------------------------------------------------------------------------
    @classmethod
    def spark_fit(
        cls, train: DataFrame, encodings: list[Encoding], ctx: FitContext
    ) -> dict[str, dict[str, Any]]:
        """Fitted state per field name for every encoding of this fit group (one pass)."""
        return {e.field.name: {} for e in encodings}

    @classmethod
    def spark_prepare(cls, df: DataFrame, encodings: list[Encoding], root: str) -> DataFrame:
        """Add what every encoding of this fit group's :meth:`spark_encode` reads, in one
        step for the group (e.g. one indexer over all vocabulary slots); ``df`` carries the
        token slots."""
        return df

    def spark_raw(self) -> Column:
        """The (transformed) raw string the field encodes; null means missing."""
        from pyspark.sql import functions as F

        from fm_spark.features.encodings.modifiers import spark_transformed

        return spark_transformed(F.col(self.field.source), self.field.transform)

    def spark_number(self) -> Column:
        """The parsed number (bigint / double) of a numeric field; null: missing.

        Rows reach an encoding only after the quarantine rules
        (:func:`fm_spark.features.quarantine.parse_rules`) accepted them, which already
        matched every present value against its pattern: a plain cast parses such a value
        exactly, so the regex runs once per value, not once per pass.
        """
        return self.spark_raw().cast("bigint" if self.field.dtype == "int" else "double")

    def spark_slots(self) -> dict[str, Column]:
        """Temporary columns :meth:`spark_encode` reads, added for all fields in one
        projection (one per slot for token encodings)."""
        return {}

    def spark_encode(
        self, df: DataFrame, root: str
    ) -> tuple[DataFrame, list[Column], list[Column | None]]:
        """Add what the ids need (e.g. joins) to ``df``, which carries the ``spark_slots``
        columns; return per output column the local id and value expressions (None: no
        value column). ``root`` holds the fitted artifacts."""
        raise NotImplementedError

    # -- numpy -------------------------------------------------------------------------------
    def load(self, directory: Path) -> None:
        """Read the fitted artifacts (e.g. a vocabulary) from the feature-map directory."""

    def encode(self, inp: FieldInput) -> tuple[np.ndarray, np.ndarray | None]:
        """Local ids ``[n, width]`` (int64) and values (float32, None: all 1.0)."""
        raise NotImplementedError
