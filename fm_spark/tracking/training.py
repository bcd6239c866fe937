"""``fm-spark train`` as one MLflow run: params, per-epoch metrics, results, plots, the model.

The run lives in the experiment named after the dataset. Its id is kept in the run directory
(``mlflow_run.json``), so ``--resume`` continues the same MLflow run. Per-epoch metrics
(train loss, samples/s, valid metrics) are logged with ``step = epoch`` by
:class:`EpochLogger`, a picklable callback that rank 0 calls after every epoch
(``WorkerJob.callbacks``); a run directory trained untracked is logged afterwards by
:func:`track_finished` (epoch history from ``metrics.json``). The logged model is the raw-row
pyfunc of :mod:`fm_spark.registry`, registered under ``register`` with the alias
``challenger`` when asked.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fm_spark.config import DatasetConfig, config_hash

__all__ = [
    "RUN_ID_FILE",
    "EpochLogger",
    "epoch_metrics",
    "log_training_results",
    "stored_run_id",
    "track_finished",
    "train_tracked",
    "training_params",
]

log = logging.getLogger("fm_spark.tracking")

RUN_ID_FILE = "mlflow_run.json"
MODEL_ARTIFACT = "model"
PLOT_ROWS = 200_000
EPOCH_PREFIX = "epoch/"


class EpochLogger:
    """Logs one epoch's record to an MLflow run (``step`` = epoch); safe to pickle."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in epoch_metrics(record).items()]
        MlflowClient(self.tracking_uri).log_batch(self.run_id, metrics=metrics)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        pass


def epoch_metrics(record: dict[str, Any]) -> dict[str, float]:
    """``epoch/train_loss``, ``epoch/valid_auc``, ...: per-epoch curves, kept apart from the
    final ``valid_*`` / ``test_*`` metrics of the returned (best-epoch) model."""
    out = {
        f"{EPOCH_PREFIX}{k}": float(record[k])
        for k in ("train_loss", "samples_per_s", "seconds")
        if isinstance(record.get(k), int | float)
    }
    for k, v in (record.get("valid") or {}).items():
        if isinstance(v, int | float) and k != "rows":
            out[f"{EPOCH_PREFIX}valid_{k}"] = float(v)
    return out


def stored_run_id(run_dir: Path) -> str | None:
    path = Path(run_dir) / RUN_ID_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("run_id")


def _store_run_id(run_dir: Path, run: Any, uri: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": uri,
    }
    (run_dir / RUN_ID_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def _fingerprint(obj: Any) -> Any:
    fp = getattr(obj, "fingerprint", None)
    return fp() if callable(fp) else fp


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def training_params(cfg: DatasetConfig, model: str, data_dir: str, fmap: Any) -> dict[str, Any]:
    """Every hyperparameter after defaults, plus what ties the run to code, config and data."""
    from fm_spark.train.distributed import resolve_device
    from fm_spark.train.loop import model_hparams

    params: dict[str, Any] = {
        "model": model,
        "dataset": cfg.name,
        "config_hash": config_hash(cfg),
        "feature_map_hash": fmap.config_hash,
        "num_features": fmap.num_features,
        "data_dir": data_dir,
        "workers": cfg.train.workers,
        "device": resolve_device(cfg.train.device).type,
        "git_commit": _git_commit(),
        "feature_map_fingerprint": _fingerprint(fmap),
    }
    params.update({f"train.{k}": v for k, v in cfg.train.model_dump(mode="json").items()})
    params.update({f"model.{k}": v for k, v in model_hparams(cfg, model).items()})
    for f in fmap.fields:
        fp = _fingerprint(f)
        if fp is not None:
            params[f"field.{f.name}"] = fp
    return {k: v for k, v in params.items() if v is not None}


def train_tracked(
    cfg: DatasetConfig,
    data_dir: str,
    model: str,
    output: Path,
    resume: bool = False,
    tracking_uri: str | None = None,
    register: str | None = None,
) -> dict[str, Any]:
    """:func:`fm_spark.train.run.train` inside an MLflow run; returns its metrics plus the
    MLflow run id (``mlflow_run_id``) and, with ``register``, the new version."""
    from fm_spark.tracking.store import configure, start_run
    from fm_spark.train.run import train

    run_dir = Path(output)
    uri = configure(tracking_uri)
    previous = stored_run_id(run_dir) if resume else None
    tags = {"fm_spark.stage": "train", "fm_spark.model": model}
    with start_run(cfg.name, run_name=model, run_id=previous, tags=tags) as run:
        _store_run_id(run_dir, run, uri)
        if previous is None:
            _log_inputs(cfg, model, data_dir)
        logger = EpochLogger(uri, run.info.run_id)
        metrics = train(
            cfg, data_dir=data_dir, model=model, output=run_dir, resume=resume, callbacks=(logger,)
        )
        extra = log_training_results(
            cfg,
            data_dir,
            model,
            run_dir,
            metrics,
            history_logged=True,
            register=register,
        )
    return {**metrics, "mlflow_run_id": run.info.run_id, **extra}


def track_finished(
    cfg: DatasetConfig,
    data_dir: str,
    model: str,
    run_dir: Path,
    metrics: dict[str, Any],
    register: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Log a run directory that was trained untracked (``fm_spark.train.run.train``) as one
    MLflow run, as ``train_tracked`` would have; returns the run id and model facts."""
    from fm_spark.tracking.store import configure, start_run

    uri = configure(tracking_uri)
    tags = {"fm_spark.stage": "train", "fm_spark.model": model}
    with start_run(cfg.name, run_name=model, tags=tags) as run:
        _store_run_id(Path(run_dir), run, uri)
        _log_inputs(cfg, model, data_dir)
        extra = log_training_results(
            cfg, data_dir, model, Path(run_dir), metrics, register=register
        )
    return {"mlflow_run_id": run.info.run_id, **extra}


def _log_inputs(cfg: DatasetConfig, model: str, data_dir: str) -> None:
    """Params and the training dataset input of a new run."""
    import mlflow

    from fm_spark.features.feature_map import FeatureMap
    from fm_spark.tracking.data import dataset_of

    fmap = _feature_map_of(data_dir, FeatureMap)
    mlflow.log_params(training_params(cfg, model, data_dir, fmap))
    ds = dataset_of(data_dir)
    mlflow.log_input(ds, context="training")
    mlflow.set_tag("fm_spark.data_digest", ds.digest)


def _feature_map_of(data_dir: str, cls: Any) -> Any:
    from pyarrow import fs as pafs

    from fm_spark.data.reader import dataset_url

    fs, root = pafs.FileSystem.from_uri(dataset_url(data_dir))
    with fs.open_input_stream(f"{root}/feature_map.json") as handle:
        return cls.model_validate(json.loads(handle.read()))


def log_training_results(
    cfg: DatasetConfig,
    data_dir: str,
    model: str,
    run_dir: Path,
    metrics: dict[str, Any],
    history_logged: bool = False,
    register: str | None = None,
) -> dict[str, Any]:
    """Into the active run: final metrics, artifacts, plots and the pyfunc model."""
    import mlflow

    from fm_spark.registry.scorer import MODEL_SPEC_FILE, write_model_spec
    from fm_spark.train.loop import model_hparams

    run_dir = Path(run_dir)
    write_model_spec(run_dir / MODEL_SPEC_FILE, model, model_hparams(cfg, model))
    final: dict[str, float] = {}
    for split in ("valid", "test"):
        for k, v in (metrics.get(split) or {}).items():
            if isinstance(v, int | float):
                final[f"{split}_{k}"] = float(v)
    for k in (
        "train_seconds",
        "seconds_to_best",
        "epochs_run",
        "best_epoch",
        "train_samples_per_s",
    ):
        if isinstance(metrics.get(k), int | float):
            final[k] = float(metrics[k])
    mlflow.log_metrics(final)
    history = metrics.get("history") or []
    if not history_logged:
        for record in history:
            mlflow.log_metrics(epoch_metrics(record), step=int(record["epoch"]))
    for name in ("config.yaml", "feature_map.json", "metrics.json", MODEL_SPEC_FILE):
        if (run_dir / name).exists():
            mlflow.log_artifact(str(run_dir / name))
    from fm_spark.registry.model import log_pyfunc

    with tempfile.TemporaryDirectory(prefix="fm-spark-bundle-") as tmp:
        try:
            info, scorer = log_pyfunc(
                data_dir,
                run_dir,
                Path(tmp) / "bundle",
                MODEL_ARTIFACT,
                register=register,
                metrics=metrics,
            )
        except ValueError as exc:  # e.g. a synthetic feature map: no raw format to parse
            if register:
                from fm_spark.train.errors import TrainError

                raise TrainError(
                    f"trained, but cannot register {register!r} (the run is tracked without "
                    f"a model): {exc}"
                ) from None
            log.warning("no pyfunc logged (weights only): %s", exc)
            mlflow.log_artifact(str(run_dir / "model.pt"))
            return {"model_uri": None}
        _log_plots(scorer, data_dir, history, Path(tmp), f"{cfg.name} {model}")
    out: dict[str, Any] = {"model_uri": info.model_uri}
    if register:
        out.update(registered_model=register, registered_version=info.registered_model_version)
    return out


def _log_plots(scorer: Any, data_dir: str, history: list, tmp: Path, title: str) -> None:
    import mlflow

    from fm_spark.data.reader import dataset_url
    from fm_spark.tracking.plots import calibration_plot, learning_curves, roc_plot
    from fm_spark.tracking.predictions import predict_split

    plots = tmp / "plots"
    plots.mkdir()
    if history:
        learning_curves(history, plots / "learning_curves.png", title)
    pred = predict_split(scorer.net, scorer.feature_map, f"{dataset_url(data_dir)}/test", PLOT_ROWS)
    if len(pred.labels) and 0 < pred.labels.sum() < len(pred.labels):
        roc_plot(pred.labels, pred.probabilities, plots / "roc_test.png", f"{title}: test ROC")
        calibration_plot(
            pred.labels,
            pred.probabilities,
            plots / "calibration_test.png",
            f"{title}: test reliability",
        )
    mlflow.log_artifacts(str(plots), artifact_path="plots")
