"""``fm-spark score``: raw logs -> Parquet of click probabilities, with a registered model.

The raw rows go through the feature job's reader and quarantine rules
(:func:`fm_spark.features.source.read_raw`, :func:`~fm_spark.features.quarantine.parse_rules`
with the label optional: scoring does not know outcomes, but a present, unknown label is
still ``bad_label``). Good rows are scored in ``mapInPandas``: each Arrow batch goes through
the model's own serving encoder and torch module (:class:`fm_spark.registry.scorer.Scorer`,
the very code the pyfunc runs), loaded once per Python worker from the model's artifacts,
which are shipped to the executors with ``SparkContext.addFile``. No row-at-a-time UDF.

Output, published atomically like the feature job's (staging sibling, one rename,
``_SUCCESS`` last; an existing output is refused without ``overwrite``)::

    DIR/scores/       Parquet: the --keep columns, probability (double), reason (null = scored)
    DIR/quarantine/   JSON lines of rows that failed the rules: raw, reason, detail, source_file
    DIR/summary.json  rows read / scored / quarantined per reason, the model, durations
    DIR/_SUCCESS
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ScoreError", "score"]

SCORES_DIR = "scores"
QUARANTINE_DIR = "quarantine"
SUMMARY_FILE = "summary.json"
_SCORERS: dict[str, Any] = {}


class ScoreError(RuntimeError):
    """A failure the operator can act on (unknown model, bad --keep, existing output)."""


def _scorer(bundle_name: str) -> Any:
    """One :class:`Scorer` per Python worker process and bundle."""
    if bundle_name not in _SCORERS:
        from pyspark import SparkFiles

        from fm_spark.registry.scorer import Scorer

        _SCORERS[bundle_name] = Scorer.load(SparkFiles.get(bundle_name))
    return _SCORERS[bundle_name]


def _model_bundle(model_uri: str) -> tuple[Path, Any]:
    """Download the model's artifacts; returns (bundle dir, the model's dataset config)."""
    import mlflow.artifacts
    import yaml
    from mlflow.exceptions import MlflowException

    from fm_spark.config import parse_config

    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    except MlflowException as exc:
        raise ScoreError(f"cannot load model {model_uri}: {exc.message}") from None
    bundle = local / "artifacts"
    config = bundle / "config.yaml"
    if not config.exists():
        raise ScoreError(f"{model_uri} is not an fm-spark model (no artifacts/config.yaml)")
    cfg = parse_config(yaml.safe_load(config.read_text(encoding="utf-8")), str(config))
    return bundle, cfg


def score(
    model_uri: str,
    input_path: str | list[str],
    output: str,
    keep: tuple[str, ...] | list[str] = (),
    overwrite: bool = False,
    spark: Any = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Score ``input_path`` (file, folder or glob) with ``model_uri``; returns the summary."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from fm_spark.features.publish import Publisher, PublishError
    from fm_spark.features.quarantine import (
        DETAIL,
        RAW,
        REASON,
        REASONS,
        SOURCE_FILE,
        parse_rules,
        with_reason,
    )
    from fm_spark.features.source import read_raw
    from fm_spark.registry.scorer import PROBABILITY
    from fm_spark.registry.scorer import REASON as OUT_REASON
    from fm_spark.tracking.store import configure

    started = time.monotonic()
    configure(tracking_uri)
    bundle, cfg = _model_bundle(model_uri)
    unknown = [c for c in keep if c not in cfg.input.columns]
    if unknown:
        raise ScoreError(f"--keep {unknown}: not input columns of the model ({cfg.input.columns})")
    if spark is None:
        from fm_spark.spark import get_spark

        spark = get_spark("fm-spark-score")
    out = Publisher(spark, output, overwrite=overwrite, marker_files=(SUMMARY_FILE,))
    try:
        staging = out.begin()
    except PublishError as exc:
        raise ScoreError(str(exc)) from None
    shipped = _ship(spark, bundle)
    checked = None
    try:
        raw = read_raw(spark, cfg.input, input_path)
        bad = F.col(REASON).isNotNull()
        checked = (
            with_reason(raw, parse_rules(cfg, require_label=False), cfg.label)
            .select(
                F.when(bad, F.col(RAW)).alias(RAW),
                F.when(bad, F.col(SOURCE_FILE)).alias(SOURCE_FILE),
                REASON,
                DETAIL,
                *cfg.input.columns,
            )
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        counts = {
            r[REASON]: int(r["n"])
            for r in checked.groupBy(REASON).count().withColumnRenamed("count", "n").collect()
        }
        n_bad = sum(v for k, v in counts.items() if k is not None)
        qdir = out.fs.join(staging, QUARANTINE_DIR)
        if n_bad:
            checked.where(bad).select(
                F.col(RAW).alias("raw"),
                F.col(REASON).alias("reason"),
                F.col(DETAIL).alias("detail"),
                F.col(SOURCE_FILE).alias("source_file"),
            ).coalesce(1).write.json(qdir)
        else:
            out.fs.mkdirs(qdir)
        good = checked.where(~bad).select(*cfg.input.columns)
        schema = T.StructType(
            [
                *(T.StructField(c, T.StringType()) for c in keep),
                T.StructField(PROBABILITY, T.DoubleType()),
                T.StructField(OUT_REASON, T.StringType()),
            ]
        )
        columns, kept = list(cfg.input.columns), list(keep)

        def run(batches):
            scorer = _scorer(shipped)
            for pdf in batches:
                scored = scorer.score(pdf[columns])
                for c in reversed(kept):
                    scored.insert(0, c, pdf[c].to_numpy())
                yield scored

        good.mapInPandas(run, schema).write.parquet(out.fs.join(staging, SCORES_DIR))
        rows_read = sum(counts.values())
        summary = {
            "status": "ok",
            "model_uri": model_uri,
            "input": input_path,
            "output": out.final,
            "rows_read": rows_read,
            "rows_scored": counts.get(None, 0),
            "rows_quarantined": n_bad,
            "quarantined_by_reason": {r: counts.get(r, 0) for r in REASONS},
            "duration_s": round(time.monotonic() - started, 3),
        }
        out.fs.write_text(
            out.fs.join(staging, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True) + "\n"
        )
        out.commit()
        return summary
    except BaseException:
        out.abort()
        raise
    finally:
        if checked is not None:
            checked.unpersist()


def _ship(spark: Any, bundle: Path) -> str:
    """Copy the bundle under a content-derived name and add it to the Spark job's files."""
    digest = hashlib.sha256()
    for path in sorted(bundle.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(bundle).as_posix().encode())
            digest.update(str(path.stat().st_size).encode())
    digest.update((bundle / "model.pt").read_bytes())
    name = f"fm-spark-model-{digest.hexdigest()[:16]}"
    target = Path(tempfile.gettempdir()) / "fm-spark-score" / name
    if not target.exists():
        tmp = target.with_name(f".{name}.{time.time_ns()}")
        shutil.copytree(bundle, tmp)
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent job shipped it first
    try:
        spark.sparkContext.addFile(str(target), recursive=True)
    except Exception as exc:  # already added in this session
        if "already registered" not in str(exc):
            raise
    return name
