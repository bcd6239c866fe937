"""The Spark executor of the encodings: fit every field on train, transform raw rows to ids.

:class:`Featurizer` (the estimator) holds one unfitted encoding per field (from the
registry, :mod:`fm_spark.features.encodings`) and fits them on the train split, one pass per
fit group (all vocabularies in one aggregation, all quantile edges in one
``approxQuantile``). The result, :class:`FeaturizerModel`, places each fitted encoding at an
offset in the global id space, maps raw string columns to int32 global ids with column
expressions (vocabulary slots through one MLlib ``StringIndexerModel`` per fit group, see
:meth:`~fm_spark.features.encodings.vocab.Vocab.spark_prepare`), describes itself as the
feature map and can be loaded back from a feature-map directory to encode more rows in Spark
(batch scoring).

Token slots (a field's token per slot: the raw string, its log-bin, a multi-valued field's
k-th value) do not depend on anything fitted, so the feature job adds them once with
:func:`tokenize` before caching: the fit counts them and the transform indexes them without
re-parsing numbers on every pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from fm_spark.features.encodings import Encoding, FieldDef, FitContext, encoding_class
from fm_spark.features.encodings.base import TMP_PREFIX
from fm_spark.features.encodings.vocab import VOCAB_DIR
from fm_spark.features.feature_map import FEATURE_MAP_FILE, ColumnInfo, FeatureMap, FieldInfo
from fm_spark.features.io import HadoopFS

__all__ = ["QUANTILE_RELATIVE_ERROR", "VOCAB_DIR", "Featurizer", "FeaturizerModel", "tokenize"]

QUANTILE_RELATIVE_ERROR = 0.001
_MAX_FEATURES = 2**31 - 1  # ids are int32


def tokenize(df: DataFrame, encodings: Sequence[Encoding]) -> DataFrame:
    """``df`` plus every encoding's token-slot columns it does not carry yet (one projection:
    one per field would make the plan deep)."""
    slots = {k: v for e in encodings for k, v in e.spark_slots().items() if k not in df.columns}
    return df.withColumns(slots) if slots else df


def fit_groups(encodings: Sequence[Encoding]) -> list[list[Encoding]]:
    """Encodings that are fitted (and prepared for encoding) together, in field order."""
    groups: dict[object, list[Encoding]] = {}
    for enc in encodings:
        groups.setdefault(enc.fit_group or type(enc), []).append(enc)
    return list(groups.values())


@dataclass(frozen=True)
class Featurizer:
    """Fits every field's encoding on the train split."""

    fields: tuple[FieldDef, ...]
    quantile_relative_error: float = QUANTILE_RELATIVE_ERROR

    def unfitted(self) -> list[Encoding]:
        return [encoding_class(f.encoding)(f) for f in self.fields]

    def slot_columns(self) -> list[str]:
        """The token-slot columns :func:`tokenize` adds for these fields."""
        return [k for e in self.unfitted() for k in e.spark_slots()]

    def fit(self, train: DataFrame, root: str) -> FeaturizerModel:
        """Learn the fitted state of every field from ``train`` (raw string columns, good
        rows), writing artifacts (vocabularies) under ``root``, the model's home."""
        ctx = FitContext(root, HadoopFS(train.sparkSession, root), self.quantile_relative_error)
        unfitted = self.unfitted()
        train = tokenize(train, unfitted)
        fitted_state: dict[str, dict] = {}
        for encs in fit_groups(unfitted):
            fitted_state.update(type(encs[0]).spark_fit(train, encs, ctx))
        encoders = [type(e)(e.field, fitted_state[e.field.name]) for e in unfitted]
        model = FeaturizerModel(tuple(encoders), root)
        if model.num_features > _MAX_FEATURES:
            raise ValueError(
                f"{model.num_features} features do not fit int32 ids; lower num_buckets"
            )
        return model


@dataclass(frozen=True)
class FeaturizerModel:
    """Fitted encodings for every field, in field order; ``root`` holds their artifacts."""

    encoders: tuple[Encoding, ...]
    root: str

    @property
    def offsets(self) -> list[int]:
        out, offset = [], 0
        for e in self.encoders:
            out.append(offset)
            offset += e.size
        return out

    @property
    def num_features(self) -> int:
        return sum(e.size for e in self.encoders)

    def field_infos(self) -> list[FieldInfo]:
        return [e.info(o) for e, o in zip(self.encoders, self.offsets, strict=True)]

    def column_infos(self) -> list[ColumnInfo]:
        return [c for e in self.encoders for c in e.column_infos()]

    @property
    def id_columns(self) -> list[str]:
        return [c.name for c in self.column_infos()]

    @property
    def value_columns(self) -> list[str]:
        return [c.value_column for c in self.column_infos() if c.value_column]

    def transform(self, df: DataFrame, keep: Sequence[str] | None = None) -> DataFrame:
        """Raw string columns -> ``keep`` columns, then int32 global id columns in column
        order, then float32 value columns. ``keep`` defaults to every input column whose name
        does not clash with an output column (token slots are temporary: never kept)."""
        out_names = set(self.id_columns) | set(self.value_columns)
        if keep is None:
            keep = [c for c in df.columns if c not in out_names and not c.startswith(TMP_PREFIX)]
        ids: list[Column] = []
        values: list[Column] = []
        df = tokenize(df, self.encoders)
        for encs in fit_groups(self.encoders):
            df = type(encs[0]).spark_prepare(df, encs, self.root)
        for enc, offset in zip(self.encoders, self.offsets, strict=True):
            df, local_ids, vals = enc.spark_encode(df, self.root)
            for name, local, val in zip(enc.field.column_names, local_ids, vals, strict=True):
                ids.append((F.lit(offset) + local).cast("int").alias(name))
                vcol = enc.value_column(name)
                if vcol is not None and val is not None:
                    values.append(val.cast("float").alias(vcol))
        return df.select(*[F.col(c) for c in keep], *ids, *values)

    # -- persistence ------------------------------------------------------------------------
    def feature_map(self, **kwargs) -> FeatureMap:
        """The feature map of this model (``dataset``, ``config_hash``... as keywords)."""
        return FeatureMap(
            fields=self.field_infos(),
            columns=self.column_infos(),
            num_features=self.num_features,
            **kwargs,
        )

    @classmethod
    def from_feature_map(cls, fmap: FeatureMap, root: str) -> FeaturizerModel:
        encoders = tuple(encoding_class(f.encoding).from_info(f) for f in fmap.fields)
        model = cls(encoders, root)
        if model.offsets != fmap.field_offsets:
            raise ValueError(f"feature map in {root}: field offsets do not follow the sizes")
        return model

    @classmethod
    def load(cls, spark: SparkSession, directory: str) -> FeaturizerModel:
        """Re-load the featurizer a feature job wrote (any Hadoop path: local, hdfs, s3a)."""
        fs = HadoopFS(spark, directory)
        root = fs.qualify(directory)
        path = fs.join(root, FEATURE_MAP_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"no feature map at {path}: not an `fm-spark featurize` output")
        return cls.from_feature_map(FeatureMap.parse(fs.read_text(path), path), root)
