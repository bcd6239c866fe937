"""Per-field encodings as Spark stages, in the manner of Spark ML's estimators and models.

:class:`Featurizer` (the estimator) holds the fields' specs and is fitted on the train split
with Spark aggregations: all vocabularies in one ``groupBy`` over exploded ``(field, token)``
pairs ranked by a window, quantile edges in one ``approxQuantile``. The result is a
:class:`FeaturizerModel`: one fitted :class:`FieldEncoder` per field with explicit params and
an offset in the global id space. A model

* maps raw string columns to global ids with declarative column expressions, plus a left join
  per vocabulary slot (Spark broadcasts small vocabularies by itself);
* describes itself as the feature map's ``FieldInfo``/``ColumnInfo`` plus the vocabulary
  Parquet files it wrote (``vocab/<field>/``: token, count, local id; rare tokens have id 2
  so a reader can tell rare from unseen);
* can be loaded back from a feature-map directory (:meth:`FeaturizerModel.load`) to encode
  more raw rows in Spark, e.g. for batch scoring, keeping pass-through columns.

Local id layout (see :mod:`fm_spark.features.feature_map`): 0 missing; vocabularies 1 unseen,
2 rare, 3.. kept tokens by count desc then token asc; hashing 1 + bucket; bins 1 + bin.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fm_spark.config import FieldSpec
from fm_spark.features.feature_map import (
    FEATURE_MAP_FILE,
    HASH_FIRST_ID,
    MISSING_ID,
    RARE_ID,
    UNSEEN_ID,
    VALUE_PRESENT_ID,
    VOCAB_FIRST_ID,
    ColumnInfo,
    FeatureMap,
    FieldInfo,
)
from fm_spark.features.io import HadoopFS
from fm_spark.features.quarantine import numeric_value
from fm_spark.features.tokens import hash_local_id, log_bin_token, multi_tokens, raw_value

__all__ = [
    "QUANTILE_RELATIVE_ERROR",
    "VOCAB_DIR",
    "Featurizer",
    "FeaturizerModel",
    "FieldEncoder",
    "HashEncoder",
    "QuantileBinEncoder",
    "ValueEncoder",
    "VocabEncoder",
]

VOCAB_DIR = "vocab"
VOCAB_SCHEMA = T.StructType(
    [
        T.StructField("token", T.StringType()),
        T.StructField("count", T.LongType()),
        T.StructField("id", T.IntegerType()),
    ]
)
QUANTILE_RELATIVE_ERROR = 0.001
EMPTY_VOCAB_DIGEST = f"{0:016x}"
_MAX_FEATURES = 2**31 - 1  # ids are int32
_TMP = "__fm_"  # prefix of the temporary columns a transform adds (and drops)


# --------------------------------------------------------------------------------------------
# fitted per-field stages


@dataclass(frozen=True)
class FieldEncoder(ABC):
    """A fitted encoding of one field. ``offset`` places its local ids in the global space."""

    name: str
    source: str
    kind: str
    transform: str = "none"
    dtype: str = "float"
    offset: int = 0
    separator: str | None = None
    max_values: int | None = None
    encoding: str = ""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of local ids (the field's slice of the embedding table)."""

    def token_slots(self) -> dict[str, Column]:
        """Temporary columns ``encode`` reads (token encodings: one token per slot)."""
        return {}

    @abstractmethod
    def encode(self, df: DataFrame) -> tuple[DataFrame, list[Column], list[Column | None]]:
        """Add what the ids need (e.g. joins) to ``df``, which carries the ``token_slots``
        columns; return per output column the local id expression and the value expression
        (None: the column has no value column)."""

    def _params(self) -> dict:
        """Encoding-specific FieldInfo entries."""
        return {}

    # -- shared helpers --------------------------------------------------------------------
    @property
    def multi(self) -> bool:
        return self.kind == "multi_categorical"

    @property
    def column_names(self) -> list[str]:
        if self.multi:
            return [f"{self.name}_{k}" for k in range(self.max_values or 0)]
        return [self.name]

    def value_column(self, column: str) -> str | None:
        return None

    def raw(self) -> Column:
        return raw_value(self.source, self.transform)

    def info(self) -> FieldInfo:
        return FieldInfo(
            name=self.name,
            source=self.source,
            kind=self.kind,  # type: ignore[arg-type]
            encoding=self.encoding,  # type: ignore[arg-type]
            transform=self.transform,
            dtype=self.dtype if self.kind == "numeric" else "string",
            offset=self.offset,
            size=self.size,
            columns=self.column_names,
            separator=self.separator,
            max_values=self.max_values,
            **self._params(),
        )

    def column_infos(self) -> list[ColumnInfo]:
        return [
            ColumnInfo(name=c, field=self.name, value_column=self.value_column(c))
            for c in self.column_names
        ]


class _TokenEncoder(FieldEncoder):
    """Encodings that index a token (string): vocabularies, log bins and hashing. A
    multi-valued field has one token per slot; slot values are 1.0 for a token, 0.0 for
    padding, and 1.0 for the missing id in slot 0 of a row without any token."""

    def token_slots(self) -> dict[str, Column]:
        return dict(zip(self.token_columns(), _slot_tokens(self), strict=True))

    def token_columns(self) -> list[str]:
        """Temporary token columns, one per slot, that ``FeaturizerModel.transform`` adds
        (all at once: one projection instead of one per field keeps the plan small)."""
        return [f"{_TMP}{c}" for c in self.column_names]

    def value_column(self, column: str) -> str | None:
        return f"{column}__value" if self.multi else None

    def _values(self, tokens: list[Column]) -> list[Column | None]:
        if not self.multi:
            return [None]
        # Slot 0 is 1.0 either way: a token, or the missing id of a row without any token.
        return [F.lit(1.0), *[F.when(t.isNull(), 0.0).otherwise(1.0) for t in tokens[1:]]]


@dataclass(frozen=True)
class VocabEncoder(_TokenEncoder):
    """Vocabulary indexing (``vocab``, and ``log_bins`` which vocab-indexes the bin token)."""

    encoding: str = "vocab"  # or "log_bins": the same indexing of the bin token
    min_count: int = 1
    num_kept: int = 0
    vocab_path: str = ""  # relative to root
    vocab_digest: str = ""
    root: str = ""  # the feature-map directory (not serialised)

    @property
    def size(self) -> int:
        return VOCAB_FIRST_ID + self.num_kept

    def _params(self) -> dict:
        return {
            "min_count": self.min_count,
            "vocab_path": self.vocab_path,
            "vocab_digest": self.vocab_digest,
        }

    def vocabulary(self, spark: SparkSession) -> DataFrame:
        return spark.read.schema(VOCAB_SCHEMA).parquet(f"{self.root.rstrip('/')}/{self.vocab_path}")

    def encode(self, df: DataFrame) -> tuple[DataFrame, list[Column], list[Column | None]]:
        vocab = self.vocabulary(df.sparkSession)
        ids, tokens = [], []
        for tok in self.token_columns():
            vid = f"{tok}_id"
            df = df.join(
                vocab.select(F.col("token").alias(tok), F.col("id").alias(vid)), on=tok, how="left"
            )
            ids.append(
                F.when(F.col(tok).isNull(), MISSING_ID)
                .when(F.col(vid).isNull(), UNSEEN_ID)
                .otherwise(F.col(vid))
            )
            tokens.append(F.col(tok))
        return df, ids, self._values(tokens)


@dataclass(frozen=True)
class HashEncoder(_TokenEncoder):
    """Hashing into ``num_buckets`` per-field buckets with Spark's ``xxhash64`` (seed 42)."""

    encoding: str = "hash"
    num_buckets: int = 1
    salt: str = ""

    @property
    def size(self) -> int:
        return HASH_FIRST_ID + self.num_buckets

    def _params(self) -> dict:
        return {"num_buckets": self.num_buckets, "hash_salt": self.salt}

    def encode(self, df: DataFrame) -> tuple[DataFrame, list[Column], list[Column | None]]:
        tokens = [F.col(t) for t in self.token_columns()]
        ids = [hash_local_id(t, self.salt, self.num_buckets) for t in tokens]
        return df, ids, self._values(tokens)


@dataclass(frozen=True)
class QuantileBinEncoder(FieldEncoder):
    """Bins between quantile edges learned on train: id 1 + number of edges <= x."""

    encoding: str = "quantile_bins"
    edges: tuple[float, ...] = field(default_factory=tuple)

    @property
    def size(self) -> int:
        return 1 + len(self.edges) + 1

    def _params(self) -> dict:
        return {"bin_edges": list(self.edges)}

    def encode(self, df: DataFrame) -> tuple[DataFrame, list[Column], list[Column | None]]:
        x = numeric_value(self.raw(), self.dtype).cast("double")
        above = sum((F.when(x >= F.lit(e), 1).otherwise(0) for e in self.edges), F.lit(0))
        return df, [F.when(x.isNull(), MISSING_ID).otherwise(1 + above)], [None]


@dataclass(frozen=True)
class ValueEncoder(FieldEncoder):
    """The number itself: id 1 with value x when present, id 0 with value 1.0 when missing."""

    encoding: str = "value"

    @property
    def size(self) -> int:
        return 2

    def value_column(self, column: str) -> str | None:
        return f"{column}__value"

    def encode(self, df: DataFrame) -> tuple[DataFrame, list[Column], list[Column | None]]:
        x = numeric_value(self.raw(), self.dtype).cast("double")
        present = x.isNotNull()
        return (
            df,
            [F.when(present, VALUE_PRESENT_ID).otherwise(MISSING_ID)],
            [F.when(present, x).otherwise(1.0)],
        )


def _slot_tokens(enc: FieldEncoder | FieldSpec) -> list[Column]:
    """The token(s) a token encoding indexes, one column per output slot (null = none)."""
    source = enc.source if isinstance(enc, FieldEncoder) else enc.input_column
    raw = raw_value(source, enc.transform)
    encoding = enc.encoding
    if enc.kind == "multi_categorical":
        tokens = multi_tokens(raw, enc.separator or "", enc.max_values or 1)
        return [tokens.getItem(k) for k in range(enc.max_values or 1)]
    if encoding == "log_bins":
        return [log_bin_token(numeric_value(raw, enc.dtype), enc.dtype)]
    return [raw]


def _counted_tokens(spec: FieldSpec) -> Column:
    """All tokens of a row that a vocabulary counts, as an array (nulls dropped later)."""
    if spec.kind == "multi_categorical":
        raw = raw_value(spec.input_column, spec.transform)
        return multi_tokens(raw, spec.separator or "", spec.max_values or 1)
    return F.array(*_slot_tokens(spec))


# --------------------------------------------------------------------------------------------
# the estimator


@dataclass(frozen=True)
class Featurizer:
    """Fits every field's encoding on the train split. Params come from the resolved specs."""

    fields: tuple[FieldSpec, ...]
    quantile_relative_error: float = QUANTILE_RELATIVE_ERROR

    def fit(self, train: DataFrame, root: str) -> FeaturizerModel:
        """Learn vocabularies and bin edges from ``train`` (raw string columns, good rows) and
        write the vocabularies under ``root/vocab/`` (``root`` becomes the model's home)."""
        fs = HadoopFS(train.sparkSession, root)
        vocab_specs = [f for f in self.fields if f.encoding in ("vocab", "log_bins")]
        kept = _fit_vocabularies(train, vocab_specs, root, fs) if vocab_specs else {}
        digests = {k: d for k, (_, d) in kept.items()}
        quantile_specs = [f for f in self.fields if f.encoding == "quantile_bins"]
        edges = (
            _fit_quantile_edges(train, quantile_specs, self.quantile_relative_error)
            if quantile_specs
            else {}
        )
        encoders: list[FieldEncoder] = []
        offset = 0
        for spec in self.fields:
            n_kept = kept.get(spec.name, (0, EMPTY_VOCAB_DIGEST))[0]
            enc = _fitted_encoder(spec, root, n_kept, edges.get(spec.name, ()))
            if isinstance(enc, VocabEncoder):
                enc = replace(enc, vocab_digest=digests.get(spec.name, EMPTY_VOCAB_DIGEST))
            enc = replace(enc, offset=offset)
            encoders.append(enc)
            offset += enc.size
        if offset > _MAX_FEATURES:
            raise ValueError(f"{offset} features do not fit int32 ids; lower num_buckets")
        return FeaturizerModel(tuple(encoders), root)


def _common(spec: FieldSpec) -> dict:
    return {
        "name": spec.name,
        "source": spec.input_column,
        "kind": spec.kind,
        "transform": spec.transform,
        "dtype": spec.dtype,
        "separator": spec.separator,
        "max_values": spec.max_values if spec.kind == "multi_categorical" else None,
    }


def _fitted_encoder(
    spec: FieldSpec, root: str, num_kept: int, edges: Sequence[float]
) -> FieldEncoder:
    common = _common(spec)
    if spec.encoding in ("vocab", "log_bins"):
        return VocabEncoder(
            **common,
            encoding=spec.encoding,
            min_count=spec.min_count or 1,
            num_kept=num_kept,
            vocab_path=f"{VOCAB_DIR}/{spec.name}",
            root=root,
        )
    if spec.encoding == "hash":
        return HashEncoder(**common, num_buckets=spec.num_buckets or 1, salt=f"{spec.name}:")
    if spec.encoding == "quantile_bins":
        return QuantileBinEncoder(**common, edges=tuple(edges))
    return ValueEncoder(**common)


def _tagger(name: str):
    return lambda t: F.struct(F.lit(name).alias("field"), t.alias("token"))


def _fit_vocabularies(
    train: DataFrame, specs: list[FieldSpec], root: str, fs: HadoopFS
) -> dict[str, tuple[int, str]]:
    """One aggregation for every vocabulary; returns the number of kept tokens per field and
    the vocabulary's digest (xor of ``xxhash64(token || U+0001 || id)``).

    Written partitioned by field in one job, then each ``field=<name>`` folder is renamed to
    ``vocab/<name>``. The (small) vocabulary frame is cached so the sizes come from memory.
    """
    pairs = train.select(
        F.explode(
            F.concat(*[F.transform(_counted_tokens(s), _tagger(s.name)) for s in specs])
        ).alias("p")
    ).select("p.field", "p.token")
    counts = pairs.where(F.col("token").isNotNull()).groupBy("field", "token").count()
    min_count = F.create_map(*[F.lit(x) for s in specs for x in (s.name, s.min_count or 1)])
    rank = F.row_number().over(Window.partitionBy("field").orderBy(F.desc("count"), F.asc("token")))
    vocab = counts.select(
        "field",
        "token",
        F.col("count").cast("long").alias("count"),
        F.when(F.col("count") >= min_count[F.col("field")], rank + (VOCAB_FIRST_ID - 1))
        .otherwise(RARE_ID)
        .cast("int")
        .alias("id"),
    ).persist()
    try:
        staging = fs.join(root, VOCAB_DIR, "_partitioned")
        vocab.write.partitionBy("field").parquet(staging)
        entry = F.xxhash64(F.concat_ws("\u0001", "token", F.col("id").cast("string")))
        sizes = {
            r["field"]: (int(r["kept"]), f"{int(r['digest']) & (2**64 - 1):016x}")
            for r in vocab.groupBy("field")
            .agg(
                F.sum(F.when(F.col("id") >= VOCAB_FIRST_ID, 1).otherwise(0)).alias("kept"),
                F.bit_xor(entry).alias("digest"),
            )
            .collect()
        }
    finally:
        vocab.unpersist()
    spark = train.sparkSession
    for spec in specs:
        src, dst = fs.join(staging, f"field={spec.name}"), fs.join(root, VOCAB_DIR, spec.name)
        if fs.exists(src):
            fs.rename(src, dst)
        else:  # no token in train at all: an empty vocabulary, so readers find a file
            spark.createDataFrame([], VOCAB_SCHEMA).write.parquet(dst)
    fs.delete(staging)
    return sizes


def _fit_quantile_edges(
    train: DataFrame, specs: list[FieldSpec], relative_error: float
) -> dict[str, tuple[float, ...]]:
    """Distinct sorted ``approxQuantile`` edges at i/num_bins, all fields in one pass."""
    xs = train.select(
        *[
            numeric_value(raw_value(s.input_column, s.transform), s.dtype)
            .cast("double")
            .alias(f"{_TMP}{i}")
            for i, s in enumerate(specs)
        ]
    )
    # approxQuantile takes one probability list for all columns: ask for the union, then pick
    # each field's own probabilities out of it.
    probs = sorted({i / s.num_bins for s in specs for i in range(1, s.num_bins or 1)})
    if not probs:
        return {s.name: () for s in specs}
    quantiles = xs.approxQuantile(list(xs.columns), probs, relative_error)
    out = {}
    for spec, q in zip(specs, quantiles, strict=True):
        wanted = {i / spec.num_bins for i in range(1, spec.num_bins or 1)}
        picked = [v for p, v in zip(probs, q, strict=False) if p in wanted]
        out[spec.name] = tuple(sorted(set(picked)))
    return out


# --------------------------------------------------------------------------------------------
# the fitted model


@dataclass(frozen=True)
class FeaturizerModel:
    """Fitted encoders for every field, in field order; ``root`` holds their artifacts."""

    encoders: tuple[FieldEncoder, ...]
    root: str

    @property
    def num_features(self) -> int:
        last = self.encoders[-1]
        return last.offset + last.size

    def field_infos(self) -> list[FieldInfo]:
        return [e.info() for e in self.encoders]

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
        does not clash with an output column."""
        out_names = set(self.id_columns) | set(self.value_columns)
        if keep is None:
            keep = [c for c in df.columns if c not in out_names]
        ids: list[Column] = []
        values: list[Column] = []
        df = df.withColumns({k: v for enc in self.encoders for k, v in enc.token_slots().items()})
        for enc in self.encoders:
            df, local_ids, vals = enc.encode(df)
            for name, local, val in zip(enc.column_names, local_ids, vals, strict=True):
                ids.append((F.lit(enc.offset) + local).cast("int").alias(name))
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
        encoders = []
        for info in fmap.fields:
            common = {
                "name": info.name,
                "source": info.source,
                "kind": info.kind,
                "transform": info.transform,
                "dtype": info.dtype if info.kind == "numeric" else "float",
                "offset": info.offset,
                "separator": info.separator,
                "max_values": info.max_values,
            }
            enc: FieldEncoder
            if info.encoding in ("vocab", "log_bins"):
                enc = VocabEncoder(
                    **common,
                    encoding=info.encoding,
                    min_count=info.min_count or 1,
                    num_kept=info.size - VOCAB_FIRST_ID,
                    vocab_path=info.vocab_path or "",
                    vocab_digest=info.vocab_digest or "",
                    root=root,
                )
            elif info.encoding == "hash":
                enc = HashEncoder(
                    **common, num_buckets=info.num_buckets or 1, salt=info.hash_salt or ""
                )
            elif info.encoding == "quantile_bins":
                enc = QuantileBinEncoder(**common, edges=tuple(info.bin_edges or ()))
            else:
                enc = ValueEncoder(**common)
            if enc.size != info.size:
                raise ValueError(f"feature map field {info.name}: size {info.size} != {enc.size}")
            encoders.append(enc)
        return cls(tuple(encoders), root)

    @classmethod
    def load(cls, spark: SparkSession, directory: str) -> FeaturizerModel:
        """Re-load the featurizer a feature job wrote (any Hadoop path: local, hdfs, s3a)."""
        fs = HadoopFS(spark, directory)
        root = fs.qualify(directory)
        path = fs.join(root, FEATURE_MAP_FILE)
        if not fs.exists(path):
            raise FileNotFoundError(f"no feature map at {path}: not an `fm-spark featurize` output")
        return cls.from_feature_map(FeatureMap.parse(fs.read_text(path), path), root)
