"""``fm-spark`` command line: thin wrappers that load config and call into the package.

Heavy imports (Spark, torch, Petastorm) happen inside each command so ``--help`` stays fast.
Every command that takes ``--config`` also takes ``--set dotted.key=value`` (repeatable).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fm_spark.config import ConfigError, DatasetConfig, load_config

_set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set encoding.min_count=10 (repeatable).",
)
_tracking_option = click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db].",
)
_config_option = click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Dataset config YAML (see conf/).",
)


def _load(
    config_path: str, overrides: tuple[str, ...], params_path: str | None = None
) -> DatasetConfig:
    from fm_spark.config import load_params

    try:
        params = load_params(params_path) if params_path else None
        return load_config(config_path, list(overrides), params)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _emit(summary: dict) -> None:
    """The one machine-readable line a job prints: schedulers and tests parse it."""
    click.echo(json.dumps(summary, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fm-spark")
def main() -> None:
    """CTR prediction with the factorization-machine family on Spark + PyTorch."""


@main.command()
@click.option(
    "--format",
    "fmt",
    default="criteo",
    show_default=True,
    help="Log format: criteo (39 fields, no header) or context (12 fields, a header; make demo's).",
)
@click.option("--rows", type=click.IntRange(min=1), required=True, help="Good rows to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Log file.")
@click.option(
    "--bad-fraction",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Malformed lines to add, as a fraction of --rows.",
)
def generate(fmt: str, rows: int, seed: int, output: str, bad_fraction: float) -> None:
    """Write a synthetic click log drawn from a planted model, with its ground truth."""
    from fm_spark.datagen import generate as run

    try:
        summary = run(format=fmt, rows=rows, seed=seed, output=output, bad_fraction=bad_fraction)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    _emit(summary)


@main.command()
@_config_option
@click.option("--input", "input_path", required=True, help="Raw log file, folder or glob.")
@click.option("--output", required=True, help="Output directory (field-indexed Parquet).")
@click.option("--overwrite", is_flag=True, help="Replace an existing finished output.")
@_tracking_option
@_set_option
def featurize(
    config_path: str,
    input_path: str,
    output: str,
    overwrite: bool,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Raw logs -> field-indexed Parquet (train/valid/test) + feature_map.json."""
    from fm_spark.features.job import FeaturizeError
    from fm_spark.features.job import featurize as run
    from fm_spark.logs import setup_logging

    cfg = _load(config_path, overrides)
    setup_logging()
    try:
        summary = run(cfg, input_path, output, overwrite=overwrite)
    except FeaturizeError as exc:
        click.echo(f"featurize failed: {exc}", err=True)
        sys.exit(2)
    from fm_spark.tracking import log_featurize_run

    run_id = log_featurize_run(summary, output, tracking_uri)
    click.echo(f"MLflow run {run_id}", err=True)
    _emit(summary)


@main.command()
@_config_option
@click.option("--data", "data_dir", required=True, help="Output directory of `featurize`.")
@click.option(
    "--model",
    required=True,
    type=click.Choice(["lr", "poly2", "fm", "ffm", "fwfm"]),
    help="Model to train.",
)
@click.option("--output", default=None, help="Run directory [default: runs/<dataset>/<model>].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="= --set train.workers")
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default=None,
    help="= --set train.device",
)
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--register", default=None, metavar="NAME", help="Register as NAME@challenger.")
@click.option(
    "--params",
    "params_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="YAML of config overrides (e.g. tune's best_params.yaml), applied before --set.",
)
@_tracking_option
@_set_option
def train(
    config_path: str,
    data_dir: str,
    model: str,
    output: str | None,
    workers: int | None,
    device: str | None,
    resume: bool,
    register: str | None,
    params_path: str | None,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Train a model on featurized data (Petastorm -> torch; TorchDistributor for >1 worker)."""
    from fm_spark.tracking import train_tracked
    from fm_spark.train.run import TrainError

    extra = [f"train.workers={workers}"] if workers else []
    extra += [f"train.device={device}"] if device else []
    cfg = _load(config_path, (*overrides, *extra), params_path)
    run_dir = Path(output) if output else Path("runs") / cfg.name / model
    try:
        metrics = train_tracked(cfg, data_dir, model, run_dir, resume, tracking_uri, register)
    except TrainError as exc:
        click.echo(f"train failed: {exc}", err=True)
        sys.exit(2)
    _emit(metrics)


@main.command()
@_config_option
@click.option("--data", "data_dir", required=True, help="Output directory of `featurize`.")
@click.option("--model", required=True, type=click.Choice(["lr", "poly2", "fm", "ffm", "fwfm"]))
@click.option("--trials", type=click.IntRange(min=1), required=True, help="Trials in the study.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Seconds, at most.")
@click.option("--ranges", default=None, help="Search ranges YAML [default: conf/tune.yaml].")
@click.option(
    "--output", default=None, help="Trial folders [default: runs/<dataset>/tune-<model>]."
)
@_tracking_option
@_set_option
def tune(
    config_path: str,
    data_dir: str,
    model: str,
    trials: int,
    timeout: float | None,
    ranges: str | None,
    output: str | None,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Search lr, L2, embed_dim and batch size with Optuna; write the best as a --params file."""
    from fm_spark.train.errors import TrainError
    from fm_spark.tune import load_ranges
    from fm_spark.tune import tune as run

    cfg = _load(config_path, overrides)
    try:
        spec = load_ranges(ranges)
        spec.space(model)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    out = Path(output) if output else Path("runs") / cfg.name / f"tune-{model}"
    try:
        _emit(run(cfg, data_dir, model, spec, trials, out, timeout, tracking_uri))
    except TrainError as exc:
        click.echo(f"tune failed: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("--name", required=True, help="Registered model name.")
@click.option("--version", default=None, help="Version to promote [default: @challenger].")
@click.option("--holdout", default=None, help="Featurized dir whose test split to compare on.")
@click.option("--registry-config", default=None, help="Gate policy YAML [conf/registry.yaml].")
@_tracking_option
@_set_option
def promote(
    name: str,
    version: str | None,
    holdout: str | None,
    registry_config: str | None,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
) -> None:
    """Move NAME@champion to the challenger if it beats the champion on the same holdout."""
    from fm_spark.registry.promote import PromotionError, load_policy
    from fm_spark.registry.promote import promote as run

    try:
        policy = load_policy(registry_config, overrides)
        _emit(run(name, version, holdout, policy, tracking_uri))
    except (PromotionError, ConfigError) as exc:
        click.echo(f"promote failed: {exc}", err=True)
        sys.exit(2)


@main.group()
def models() -> None:
    """Registry look-ups."""


@models.command("list")
@_tracking_option
def models_list(tracking_uri: str | None) -> None:
    """Registered models, their latest version and aliases (one JSON line each)."""
    from fm_spark.registry.lookup import list_models

    for entry in list_models(tracking_uri):
        _emit(entry)


@models.command("show")
@click.argument("name")
@_tracking_option
def models_show(name: str, tracking_uri: str | None) -> None:
    """Versions of NAME: aliases, test metrics, data digest, promotion verdict, when."""
    from mlflow.exceptions import MlflowException

    from fm_spark.registry.lookup import show_model

    try:
        click.echo(json.dumps(show_model(name, tracking_uri), indent=2, sort_keys=True))
    except MlflowException as exc:
        click.echo(f"models show failed: {exc.message}", err=True)
        sys.exit(2)


@main.command()
@click.option("--model", "model_uri", required=True, help="e.g. models:/NAME@champion")
@click.option("--input", "input_path", required=True, help="Raw log file, folder or glob.")
@click.option("--output", required=True, help="Output directory (Parquet of probabilities).")
@click.option("--keep", multiple=True, metavar="COLUMN", help="Input column to pass through.")
@click.option("--overwrite", is_flag=True, help="Replace an existing finished output.")
@_tracking_option
def score(
    model_uri: str,
    input_path: str,
    output: str,
    keep: tuple[str, ...],
    overwrite: bool,
    tracking_uri: str | None,
) -> None:
    """Score raw logs with a registered model (Spark, mapInPandas)."""
    from fm_spark.score.job import ScoreError
    from fm_spark.score.job import score as run

    try:
        _emit(run(model_uri, input_path, output, keep, overwrite, tracking_uri=tracking_uri))
    except ScoreError as exc:
        click.echo(f"score failed: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.option("--workdir", default="runs/demo", show_default=True)
@click.option("--rows", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option(
    "--model",
    default="ffm",
    show_default=True,
    type=click.Choice(["lr", "poly2", "fm", "ffm", "fwfm"]),
)
@_set_option
def demo(workdir: str, rows: int, model: str, overrides: tuple[str, ...]) -> None:
    """Generate an ad-context log, featurize it, train a model and an LR baseline."""
    from fm_spark.demo import check_args, run_demo

    check_args(Path(workdir), rows, model)
    try:
        run_demo(Path(workdir), rows=rows, model=model, overrides=list(overrides))
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


if __name__ == "__main__":  # pragma: no cover
    main()
