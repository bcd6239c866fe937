"""``make demo``: the main job end to end on embedded defaults (local Spark, CPU torch).

generate a Criteo-format log with a planted model -> Spark feature job -> train a model ->
metrics next to the planted model's own ("oracle") AUC, which no model can beat on average.
Later issues extend this with MLflow tracking, registry promotion and batch scoring.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from fm_spark.config import DatasetConfig, load_config

DEMO_CONFIG = Path("conf/criteo.yaml")
# Enough epochs to converge on the demo's rows without making a newcomer wait long.
DEMO_OVERRIDES = ["train.epochs=4", "train.patience=1", "output.row_group_rows=20000"]


def _step(name: str) -> float:
    click.echo(f"\n== {name}", err=True)
    return time.perf_counter()


def run_demo(
    workdir: Path,
    rows: int = 200_000,
    model: str = "ffm",
    overrides: list[str] | None = None,
    config: Path = DEMO_CONFIG,
) -> dict:
    from fm_spark.datagen import generate
    from fm_spark.features.job import featurize
    from fm_spark.train.run import train

    cfg = load_config(config, [*DEMO_OVERRIDES, *(overrides or [])])
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "logs" / "day0.tsv"
    log.parent.mkdir(parents=True, exist_ok=True)

    t = _step(f"generate {rows} Criteo-format rows -> {log}")
    gen = generate(format="criteo", rows=rows, seed=0, output=log, bad_fraction=0.001)
    brief = {k: gen[k] for k in ("rows", "bad_lines", "positive_rate", "oracle") if k in gen}
    click.echo(json.dumps(brief, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)

    t = _step(f"featurize (Spark) -> {workdir / 'features'}")
    summary = featurize(cfg, str(log), str(workdir / "features"), overwrite=True)
    click.echo(json.dumps(summary, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)

    t = _step(f"train {model} (Petastorm -> torch) -> {workdir / 'runs' / model}")
    metrics = train(
        cfg,
        data_dir=str(workdir / "features"),
        model=model,
        output=workdir / "runs" / model,
        resume=False,
    )
    click.echo(json.dumps({k: v for k, v in metrics.items() if k != "history"}, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)

    oracle = gen.get("oracle", {}).get("auc")
    test_auc = metrics.get("test", {}).get("auc")
    if oracle is not None and test_auc is not None:
        click.echo(
            f"\n{model}: test AUC {test_auc:.4f}; planted model's own AUC {oracle:.4f} "
            f"(gap {oracle - test_auc:+.4f})",
            err=True,
        )
    registry = _mlflow_stage(cfg, workdir, model, metrics, rows)
    return {"generate": gen, "featurize": summary, "train": metrics, "registry": registry}


DEMO_MODEL_NAME = "fm-spark-demo"


def _mlflow_stage(cfg: DatasetConfig, workdir: Path, model: str, metrics: dict, rows: int) -> dict:
    """Track the run, register it, promote it through the gate, batch-score a new day's raw
    log through ``models:/...@champion``; print the command that opens the MLflow UI."""
    from fm_spark.datagen import generate
    from fm_spark.registry.promote import promote
    from fm_spark.score.job import score
    from fm_spark.tracking import configure
    from fm_spark.tracking.data import log_featurize_run
    from fm_spark.tracking.training import track_finished

    uri = configure()
    t = _step(f"MLflow: track, register {DEMO_MODEL_NAME}, promote, batch-score ({uri})")
    features = str(workdir / "features")
    log_featurize_run(json.loads((workdir / "features" / "summary.json").read_text()), features)
    tracked = track_finished(
        cfg, features, model, workdir / "runs" / model, metrics, register=DEMO_MODEL_NAME
    )
    decision = promote(DEMO_MODEL_NAME, version=str(tracked["registered_version"]))
    click.echo(
        json.dumps({k: decision[k] for k in ("version", "compared_with", "promoted", "reason")})
    )
    day1 = workdir / "logs" / "day1.tsv"
    generate(format="criteo", rows=max(rows // 10, 1000), seed=1, output=day1, bad_fraction=0.001)
    scored = score(
        f"models:/{DEMO_MODEL_NAME}@champion",
        str(day1),
        str(workdir / "scores" / "day1"),
        keep=("label",),
        overwrite=True,
    )
    click.echo(json.dumps({k: scored[k] for k in ("rows_read", "rows_scored", "output")}))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)
    store = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else None
    ui = (
        f".venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
        if store
        else f"open {uri} in a browser"
    )
    click.echo(f"\nMLflow UI: {ui}   (then http://127.0.0.1:5000)", err=True)
    return {"tracking": tracked, "promotion": decision, "score": scored}
