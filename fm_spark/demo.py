"""``make demo``: the main job end to end on embedded defaults (local Spark, CPU torch).

generate an ad-context log with a planted model -> Spark feature job -> train a model and a
logistic-regression baseline -> their test AUCs next to the planted model's own ("oracle"),
which no model can beat on average. The point it shows: the factorization model closes most
of the gap between the linear baseline and the best possible model.

The demo owns its work directory: it marks it (``.fm-spark-demo``) when it creates it, and a
rerun replaces the runs it made there. A directory the demo did not create is refused unless
empty, so it never deletes anything else. Later issues extend this with MLflow tracking,
registry promotion and batch scoring.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

from fm_spark.config import DatasetConfig, load_config

MODELS = ("lr", "poly2", "fm", "ffm", "fwfm")
BASELINE = "lr"
MARKER = ".fm-spark-demo"
# Below this many rows an epoch is a handful of steps and the planted interactions' vectors,
# 4 numbers per value and field pair, are seen too rarely to be learned.
MIN_ROWS = 20_000
# The demo's log: `fm-spark generate --format context` (12 fields of at most 200 values, 6
# planted interacting pairs), whose planted model 200K rows determine almost whole. On the
# Criteo shape (39 fields, 114k values) no model of the family, not even one given the planted
# pairs, comes within 0.025 of the planted AUC at that size (README, Defaults).
DEMO_FORMAT = "context"
# The demo's config is the repository's conf/context.yaml (written once); the training
# settings are the defaults, so what the demo shows is what a user gets.
DEMO_OVERRIDES: list[str] = []


def demo_config() -> Path:
    """``conf/context.yaml`` of this checkout, found from the package, not the working
    directory."""
    path = Path(__file__).resolve().parent.parent / "conf" / f"{DEMO_FORMAT}.yaml"
    if not path.exists():
        raise click.UsageError(
            f"the demo needs the repository's conf/{DEMO_FORMAT}.yaml (looked at {path}); run it "
            "from an editable install of the repository (`make setup`) or pass --config"
        )
    return path


def check_args(workdir: Path, rows: int, model: str) -> None:
    """Everything that can be refused before anything is generated."""
    if model not in MODELS:
        raise click.UsageError(f"--model {model!r}: expected one of {', '.join(MODELS)}")
    if rows < MIN_ROWS:
        raise click.UsageError(
            f"--rows {rows}: the demo needs at least {MIN_ROWS:,} rows (39 fields, values "
            "seen fewer than 10 times are cut; fewer rows leave nothing to learn)"
        )
    foreign = workdir.exists() and not (workdir / MARKER).exists()
    if foreign and (not workdir.is_dir() or any(workdir.iterdir())):
        raise click.UsageError(
            f"--workdir {workdir} exists and was not made by the demo (no {MARKER}); "
            "choose a new or empty directory"
        )


def _step(name: str) -> float:
    click.echo(f"\n== {name}", err=True)
    return time.perf_counter()


def _train(cfg, workdir: Path, model: str) -> dict:
    from fm_spark.train.run import train

    run_dir = workdir / "runs" / model
    if run_dir.exists():  # the demo's own run from a previous `make demo`: replace it
        shutil.rmtree(run_dir)
    t = _step(f"train {model} (Petastorm -> torch) -> {run_dir}")
    metrics = train(cfg, data_dir=str(workdir / "features"), model=model, output=run_dir)
    brief = {
        k: metrics[k]
        for k in ("best_epoch", "epochs_run", "train_seconds", "seconds_to_best")
        if k in metrics
    }
    brief.update(valid=metrics.get("valid"), test=metrics.get("test"))
    click.echo(json.dumps(brief, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)
    return metrics


def run_demo(
    workdir: Path,
    rows: int = 200_000,
    model: str = "ffm",
    overrides: list[str] | None = None,
    config: Path | None = None,
) -> dict:
    from fm_spark.datagen import generate
    from fm_spark.features.job import featurize

    workdir = Path(workdir)
    check_args(workdir, rows, model)
    cfg = load_config(config or demo_config(), [*DEMO_OVERRIDES, *(overrides or [])])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by `fm-spark demo`; a rerun replaces its runs\n")
    log = workdir / "logs" / "day0.tsv"
    log.parent.mkdir(parents=True, exist_ok=True)

    t = _step(f"generate {rows} {DEMO_FORMAT}-format rows -> {log}")
    gen = generate(format=DEMO_FORMAT, rows=rows, seed=0, output=log, bad_fraction=0.001)
    brief = {k: gen[k] for k in ("rows", "bad_lines", "positive_rate", "oracle") if k in gen}
    click.echo(json.dumps(brief, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)

    t = _step(f"featurize (Spark) -> {workdir / 'features'}")
    summary = featurize(cfg, str(log), str(workdir / "features"), overwrite=True)
    click.echo(json.dumps(summary, sort_keys=True))
    click.echo(f"   {time.perf_counter() - t:.1f}s", err=True)

    metrics = _train(cfg, workdir, model)
    baseline = _train(cfg, workdir, BASELINE) if model != BASELINE else metrics

    oracle = gen.get("oracle", {}).get("auc")
    test_auc = metrics.get("test", {}).get("auc")
    base_auc = baseline.get("test", {}).get("auc")
    if oracle is not None and test_auc is not None:
        click.echo(
            f"\n{model}: test AUC {test_auc:.4f}; {BASELINE} baseline {base_auc:.4f}; "
            f"planted model's own AUC {oracle:.4f} (gap {oracle - test_auc:+.4f})",
            err=True,
        )
    registry = _mlflow_stage(cfg, workdir, model, metrics, rows)
    return {
        "generate": gen,
        "featurize": summary,
        "train": metrics,
        "baseline": baseline,
        "registry": registry,
    }


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
    generate(
        format=DEMO_FORMAT, rows=max(rows // 10, 1000), seed=1, output=day1, bad_fraction=0.001
    )
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
