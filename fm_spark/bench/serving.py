"""Serving benchmark: the registered pyfunc on raw rows, and Spark batch scoring.

Measured in one run on one generated Criteo-format log (FM, 1 epoch, registered in a
temporary SQLite MLflow store):

1. **pyfunc throughput**: raw rows/s of ``model.predict`` at 10K rows a call (columns as in
   the log, strings), in process, one torch thread.
2. **single-row latency**: p50 / p99 of ``model.predict`` on one raw row (MLflow's schema
   check included), in process on one core; goal p99 < 5 ms. The serving encoder + model
   alone (``Scorer.score``) is shown beside it.
3. **batch scoring vs the feature job**: rows/s of ``fm-spark score`` (parse + quarantine in
   Spark, encoder + torch in ``mapInPandas``, Parquet write) against the feature job's rows/s
   on the same file in the same Spark session; goal ratio >= 0.5. Each is run twice and the
   second (warm) run counts.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["run"]

BATCH_ROWS = 10_000
THREADS = 1
P99_GOAL_MS = 5.0
RATIO_GOAL = 0.5


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(device: str = "cpu", quick: bool = False) -> str:
    """Measure, and return a Markdown section for BENCHMARKS.md."""
    import pandas as pd

    from fm_spark.config import load_config
    from fm_spark.datagen import generate
    from fm_spark.features.job import featurize
    from fm_spark.registry import load_model
    from fm_spark.score.job import score
    from fm_spark.spark import get_spark
    from fm_spark.tracking import configure, train_tracked

    rows = 60_000 if quick else 300_000
    singles = 300 if quick else 2_000
    threads_before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    old_uri = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with tempfile.TemporaryDirectory(prefix="fm-bench-serving-") as tmp:
            root = Path(tmp)
            configure(f"sqlite:///{root}/mlflow.db")
            log = root / "day0.tsv"
            generate(format="criteo", rows=rows, seed=5, output=log, bad_fraction=0.001)
            overrides = ["train.epochs=1", "train.device=cpu", "output.row_group_rows=20000"]
            cfg = load_config("conf/criteo.yaml", overrides)
            spark = get_spark("fm-bench-serving")
            feat_s = []
            for i in range(2):
                feat_s.append(
                    _timed(lambda i=i: featurize(cfg, str(log), str(root / f"f{i}"), spark=spark))
                )
            train_tracked(cfg, str(root / "f0"), "fm", root / "run", register="bench")
            model = load_model("bench", alias="challenger")
            scorer = model.unwrap_python_model().scorer
            score_s, n_scored = [], 0
            for i in range(2):
                t0 = time.perf_counter()
                summary = score(
                    "models:/bench@challenger", str(log), str(root / f"s{i}"), spark=spark
                )
                score_s.append(time.perf_counter() - t0)
                n_scored = summary["rows_read"]

            columns = cfg.input.columns
            lines = log.read_bytes().splitlines()[: BATCH_ROWS * 3]
            parts = [b.decode("utf-8", "replace").split("\t") for b in lines]
            frame = pd.DataFrame([p for p in parts if len(p) == len(columns)], columns=columns)
            frame = frame.where(frame != "", None)
            batches = [frame.iloc[i : i + BATCH_ROWS] for i in range(0, len(frame), BATCH_ROWS)]
            batches = [b for b in batches if len(b) == BATCH_ROWS]
            model.predict(batches[0])  # warm-up
            batch_s = [_timed(lambda b=b: model.predict(b)) for b in batches]
            one = frame.iloc[[7]]
            for _ in range(50):
                model.predict(one)
            lat = np.array([_timed(lambda: model.predict(one)) for _ in range(singles)]) * 1e3
            core = np.array([_timed(lambda: scorer.score(one)) for _ in range(singles)]) * 1e3
    finally:
        torch.set_num_threads(threads_before)
        if old_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old_uri
    feat_rate = n_scored / feat_s[-1]
    score_rate = n_scored / score_s[-1]
    return _markdown(
        {
            "rows": n_scored,
            "pyfunc_rows_per_s": BATCH_ROWS / float(np.median(batch_s)),
            "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)),
            "core_p50": float(np.percentile(core, 50)),
            "core_p99": float(np.percentile(core, 99)),
            "feat_rate": feat_rate,
            "score_rate": score_rate,
            "feat_s": feat_s,
            "score_s": score_s,
            "singles": singles,
            "seconds": time.perf_counter() - started,
            "quick": quick,
        }
    )


def _goal(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _markdown(r: dict[str, Any]) -> str:
    ratio = r["score_rate"] / r["feat_rate"]
    return "\n".join(
        [
            "## Serving: raw-row pyfunc and batch scoring",
            "",
            f"Generated Criteo-format log, {r['rows']:,} lines; FM (k=16), 1 epoch; "
            f"{THREADS} torch thread; Spark `local[*]` on {os.cpu_count()} cores"
            f"{' (quick run)' if r['quick'] else ''}.",
            "",
            "| measurement | value | goal |",
            "|---|---|---|",
            f"| pyfunc `predict`, {BATCH_ROWS:,} raw rows a call | "
            f"{r['pyfunc_rows_per_s']:,.0f} rows/s | |",
            f"| pyfunc `predict`, 1 row: p50 / p99 ({r['singles']} calls) | "
            f"{r['p50']:.2f} / {r['p99']:.2f} ms | p99 < {P99_GOAL_MS:g} ms: "
            f"{_goal(r['p99'] < P99_GOAL_MS)} |",
            f"| `Scorer.score` (encoder + model, no MLflow schema check), 1 row: p50 / p99 | "
            f"{r['core_p50']:.2f} / {r['core_p99']:.2f} ms | |",
            f"| feature job on the file (warm run) | {r['feat_rate']:,.0f} rows/s "
            f"({r['feat_s'][-1]:.1f} s) | |",
            f"| `fm-spark score` on the file (warm run) | {r['score_rate']:,.0f} rows/s "
            f"({r['score_s'][-1]:.1f} s) | |",
            f"| score / feature job | {ratio:.2f} | >= {RATIO_GOAL:g}: "
            f"{_goal(ratio >= RATIO_GOAL)} |",
            "",
            f"Section time {r['seconds']:.0f} s.",
            "",
        ]
    )
