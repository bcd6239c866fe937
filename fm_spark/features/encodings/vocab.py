"""``vocab``: a vocabulary learned on the train split.

Fit: all vocabulary fields (``vocab`` and ``log_bins``) in one aggregation over
``(field, token)`` pairs, one per token slot (``stack`` over the slot columns: flat generated
code, where exploding an array of structs per row compiled into a method so large that a
fresh JVM spent most of the fit compiling it), ranked by a window (count desc, token asc);
written partitioned by field in one job as ``vocab/<field>/`` Parquet (token, count, id; rare
tokens have id 2 so a reader can tell rare from unseen). The fitted state is the number of
kept tokens and a digest of the vocabulary (xor of ``xxhash64(token || U+0001 || id)``), which
goes into the field's fingerprint. Spark encodes with a left join per slot (small
vocabularies get broadcast); numpy with a dict lookup per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xxhash

from fm_spark.features.encodings.base import Encoding, FitContext, Param
from fm_spark.features.encodings.tokens import TokenEncoding
from fm_spark.features.spec import HASH_SEED, MISSING_ID, RARE_ID, UNSEEN_ID, VOCAB_FIRST_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

    from fm_spark.features.feature_map import FieldInfo

__all__ = ["EMPTY_VOCAB_DIGEST", "VOCAB_DIR", "Vocab", "Vocabulary", "vocab_digest"]

VOCAB_DIR = "vocab"
EMPTY_VOCAB_DIGEST = f"{0:016x}"
_ENTRY_SEPARATOR = "\u0001"

MIN_COUNT = Param(
    "min_count",
    int,
    "tokens seen fewer times in train share the field's rare id",
    default=10,
    shared=True,
    constraints={"gt": 0},
)


def vocab_digest(tokens: list[str], ids: np.ndarray) -> str:
    """The vocabulary digest Spark computes at fit time, in Python (for checks and tests)."""
    acc = np.uint64(0)
    for t, i in zip(tokens, np.asarray(ids).tolist(), strict=True):
        d = xxhash.xxh64_intdigest(f"{t}{_ENTRY_SEPARATOR}{i}".encode(), seed=HASH_SEED)
        acc ^= np.uint64(d)
    return f"{int(acc):016x}"


class Vocabulary:
    """Token -> local id (kept, or 2 for rare); tokens absent from it are unseen (1).

    A dict, built once at load: a lookup costs a hash probe per token and nothing per call,
    so a one-row request pays microseconds (``pd.Index.get_indexer`` has ~20 us of fixed cost
    per call, once per field).
    """

    def __init__(self, tokens: list[str], ids: np.ndarray) -> None:
        self.tokens = tokens
        self.ids = np.asarray(ids, dtype=np.int64)
        self._id_of: dict[str, int] = dict(zip(tokens, self.ids.tolist(), strict=True))

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        if not path.exists():
            raise FileNotFoundError(f"vocabulary {path} is missing beside the feature map")
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        tokens: list[str] = []
        ids: list[np.ndarray] = []
        for p in files:
            t = pq.read_table(p, columns=["token", "id"])
            tokens += t.column("token").to_pylist()
            ids.append(t.column("id").to_numpy())
        return cls(tokens, np.concatenate(ids) if ids else np.zeros(0, np.int64))

    def lookup(self, tokens: np.ndarray) -> np.ndarray:
        """Local ids of a token array (None = missing)."""
        get = self._id_of.get
        out = np.fromiter((get(t, UNSEEN_ID) for t in tokens), dtype=np.int64, count=len(tokens))
        out[pd.isna(tokens)] = MISSING_ID
        return out


class Vocab(TokenEncoding):
    name = "vocab"
    summary = "indexes each token by a vocabulary learned on train"
    ids = "0 missing, 1 unseen, 2 rare (< `min_count`), 3.. kept by count desc, token asc"
    params = (MIN_COUNT,)
    fitted_keys = ("vocab_path", "vocab_digest")
    fit_group: ClassVar[str | None] = "vocab"

    vocabulary: Vocabulary | None = None

    @property
    def size(self) -> int:
        return VOCAB_FIRST_ID + int(self.fitted["num_kept"])

    @classmethod
    def fitted_from_info(cls, info: FieldInfo) -> dict[str, Any]:
        return {**super().fitted_from_info(info), "num_kept": info.size - VOCAB_FIRST_ID}

    # -- Spark -------------------------------------------------------------------------------
    @classmethod
    def spark_fit(
        cls, train: DataFrame, encodings: list[Encoding], ctx: FitContext
    ) -> dict[str, dict[str, Any]]:
        """One aggregation for every vocabulary field (of any encoding of the group)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        encs = [e for e in encodings if isinstance(e, TokenEncoding)]
        # The train frame carries the token slots (the featurizer tokenizes before fitting).
        slots = [(e.field.name, c) for e in encs for c in e.token_columns()]
        stacked = ", ".join(f"{_sql_string(name)}, {_sql_name(col)}" for name, col in slots)
        pairs = train.select(F.expr(f"stack({len(slots)}, {stacked}) AS (field, token)"))
        counts = pairs.where(F.col("token").isNotNull()).groupBy("field", "token").count()
        min_count = F.create_map(
            *[F.lit(x) for e in encs for x in (e.field.name, e.field.params["min_count"])]
        )
        rank = F.row_number().over(
            Window.partitionBy("field").orderBy(F.desc("count"), F.asc("token"))
        )
        vocab = counts.select(
            "field",
            "token",
            F.col("count").cast("long").alias("count"),
            F.when(F.col("count") >= min_count[F.col("field")], rank + (VOCAB_FIRST_ID - 1))
            .otherwise(RARE_ID)
            .cast("int")
            .alias("id"),
        ).persist()
        fs = ctx.fs
        staging = fs.join(ctx.root, VOCAB_DIR, "_partitioned")
        try:
            vocab.write.partitionBy("field").parquet(staging)
            entry = F.xxhash64(F.concat_ws(_ENTRY_SEPARATOR, "token", F.col("id").cast("string")))
            stats = {
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
        out = {}
        for e in encs:
            name = e.field.name
            src, dst = fs.join(staging, f"field={name}"), fs.join(ctx.root, VOCAB_DIR, name)
            if fs.exists(src):
                fs.rename(src, dst)
            else:  # no token in train at all: an empty vocabulary, so readers find a file
                spark.createDataFrame([], _vocab_schema()).write.parquet(dst)
            kept, digest = stats.get(name, (0, EMPTY_VOCAB_DIGEST))
            out[name] = {
                "num_kept": kept,
                "vocab_path": f"{VOCAB_DIR}/{name}",
                "vocab_digest": digest,
            }
        fs.delete(staging)
        return out

    def spark_vocabulary(self, spark: Any, root: str) -> DataFrame:
        path = f"{root.rstrip('/')}/{self.fitted['vocab_path']}"
        return spark.read.schema(_vocab_schema()).parquet(path)

    def spark_index(
        self, df: DataFrame, tokens: list[str], root: str
    ) -> tuple[DataFrame, list[Column]]:
        from pyspark.sql import functions as F

        vocab = self.spark_vocabulary(df.sparkSession, root)
        ids = []
        for tok in tokens:
            vid = f"{tok}_id"
            df = df.join(
                vocab.select(F.col("token").alias(tok), F.col("id").alias(vid)), on=tok, how="left"
            )
            # The id right away, and the token dropped: every join copies the whole row, so
            # a chain of 39 carrying every token to the end copies twice the bytes.
            local = f"{tok}_local"
            df = df.withColumn(
                local,
                F.when(F.col(tok).isNull(), MISSING_ID)
                .when(F.col(vid).isNull(), UNSEEN_ID)
                .otherwise(F.col(vid)),
            ).drop(tok, vid)
            ids.append(F.col(local))
        return df, ids

    # -- numpy -------------------------------------------------------------------------------
    def load(self, directory: Path) -> None:
        """Read the vocabulary and check it against the digest in the feature map: a
        vocabulary from another run (or edited) would silently give other ids."""
        path = Path(directory) / self.fitted["vocab_path"]
        vocabulary = Vocabulary.read(path)
        expected = self.fitted.get("vocab_digest")
        if expected and vocab_digest(vocabulary.tokens, vocabulary.ids) != expected:
            raise ValueError(
                f"vocabulary {path} does not match the feature map's vocab_digest {expected}: "
                "it belongs to another featurize run; re-run `fm-spark featurize`"
            )
        self.vocabulary = vocabulary

    def np_index(self, tokens: np.ndarray) -> np.ndarray:
        if self.vocabulary is None:
            raise RuntimeError(f"{self!r}: call load(feature_map_dir) before encoding")
        return self.vocabulary.lookup(tokens)


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _sql_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _vocab_schema() -> Any:
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("token", T.StringType()),
            T.StructField("count", T.LongType()),
            T.StructField("id", T.IntegerType()),
        ]
    )
