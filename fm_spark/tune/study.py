"""``fm-spark tune``: an Optuna study whose trials are trainings, tracked as nested MLflow runs.

One study per dataset and model (``<dataset>-<model>``), stored in SQLite beside the MLflow
store (``optuna.db`` next to ``mlflow.db``; in the output folder for a non-SQLite store), so a
rerun loads it and runs only the trials still missing: ``--trials`` is the total wanted. A
trial left RUNNING by a killed tuner is marked FAIL on resume (one tuner per study at a time)
and its parameters are queued again. Trials are pruned on the per-epoch validation metric:
:class:`PruneOnEpoch`, a training callback, reports each epoch to the study and, when the
median pruner says so, leaves a marker in the trial's run folder and stops training; the
tuner sees the marker and records the trial as pruned, not failed.

The MLflow parent run is kept in the study (user attribute), so a resumed study keeps
logging under the same parent. The best trial's values are written as a YAML overlay
(``best_params.yaml``, nested sections) that ``fm-spark train --params`` applies.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from fm_spark.atomic import write_text_atomic
from fm_spark.config import DatasetConfig, parse_config
from fm_spark.train.errors import TrainError
from fm_spark.tune.space import TuneSpec, config_keys

__all__ = ["BEST_FILE", "PRUNED_FILE", "PruneOnEpoch", "study_storage", "tune"]

log = logging.getLogger("fm_spark.tune")

BEST_FILE = "best_params.yaml"
PRUNED_FILE = "pruned.json"
PARENT_ATTR = "mlflow_parent_run_id"


class TrialPruned(Exception):
    """Raised by :class:`PruneOnEpoch` to stop a trial's training."""


class PruneOnEpoch:
    """Reports each epoch's valid metric to the trial and stops a trial the pruner rejects.

    Picklable (it holds names, not connections), so it also runs inside a DDP worker.
    """

    def __init__(
        self, storage: str, study: str, trial_id: int, metric: str, pruner: Any, run_dir: str
    ) -> None:
        self.storage, self.study, self.trial_id = storage, study, trial_id
        self.metric, self.pruner, self.run_dir = metric, pruner, run_dir

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        import optuna

        value = (record.get("valid") or {}).get(self.metric)
        if not isinstance(value, int | float):
            return
        study = optuna.load_study(study_name=self.study, storage=self.storage, pruner=self.pruner)
        trial = optuna.trial.Trial(study, self.trial_id)
        trial.report(float(value), epoch)
        if trial.should_prune():
            marker = {"epoch": epoch, self.metric: float(value)}
            Path(self.run_dir, PRUNED_FILE).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            raise TrialPruned(f"pruned at epoch {epoch} ({self.metric} {value:.5f})")


def study_storage(tracking_uri: str, output: Path) -> str:
    """``sqlite:///<dir of mlflow.db>/optuna.db``, else ``<output>/optuna.db``."""
    prefix = "sqlite:///"
    folder = Path(tracking_uri[len(prefix) :]).parent if tracking_uri.startswith(prefix) else output
    return f"{prefix}{(folder / 'optuna.db').resolve()}"


def _overlay(params: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested sections (``{"train": {"lr": ...}, "models": {...}}``)."""
    nested: dict[str, Any] = {}
    for dotted, value in sorted(params.items()):
        node = nested
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return nested


def _requeue_interrupted(study: Any) -> None:
    """Trials a killed tuner left RUNNING: FAIL in the study (their MLflow runs KILLED), and
    their parameters queued, so the resumed study tries them again."""
    from optuna.trial import TrialState

    from fm_spark.tracking import client

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning(
            "trial %d was interrupted: marked failed, its parameters queued again", t.number
        )
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            client().set_terminated(run_id, status="KILLED")


def tune(
    cfg: DatasetConfig,
    data_dir: str,
    model: str,
    spec: TuneSpec,
    trials: int,
    output: Path,
    timeout: float | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study up to ``trials`` finished trials; return the best and where
    its overlay is. Raises :class:`TrainError` when no trial finishes."""
    import mlflow
    import optuna
    from optuna.trial import TrialState

    from fm_spark.tracking import EpochLogger, configure, start_run
    from fm_spark.train.run import train

    space = spec.space(model)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    uri = configure(tracking_uri)
    storage = study_storage(uri, output)
    name = f"{cfg.name}-{model}"
    pruner = optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, direction=spec.direction, load_if_exists=True
    )
    _requeue_interrupted(study)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    before = len(study.get_trials(deepcopy=False, states=done))
    study.sampler = optuna.samplers.TPESampler(
        seed=spec.seed + len(study.trials), n_startup_trials=spec.startup_trials
    )
    study.pruner = pruner
    base = cfg.model_dump(mode="json")
    parent_id = study.user_attrs.get(PARENT_ATTR)
    tags = {"fm_spark.stage": "tune", "fm_spark.model": model, "fm_spark.study": name}

    with start_run(cfg.name, run_name=f"tune-{model}", run_id=parent_id, tags=tags) as parent:
        if parent_id is None:
            study.set_user_attr(PARENT_ATTR, parent.info.run_id)
            mlflow.log_params(
                {"model": model, "data_dir": data_dir, "metric": spec.metric, "study": name}
            )
            mlflow.log_dict(spec.model_dump(mode="json"), "tune_ranges.yaml")

        def objective(trial: Any) -> float:
            params = space.suggest(trial, model)
            trial_cfg = parse_config(_merged(base, params), f"trial {trial.number}")
            run_dir = output / f"trial-{trial.number:03d}"
            pruned = None
            with start_run(
                cfg.name, run_name=f"trial-{trial.number}", nested=True, tags=tags
            ) as run:
                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                trial.set_user_attr("run_dir", str(run_dir))
                mlflow.log_params({"trial": trial.number, **params})
                callbacks = (
                    EpochLogger(uri, run.info.run_id),
                    PruneOnEpoch(storage, name, trial._trial_id, spec.metric, pruner, str(run_dir)),
                )
                try:
                    metrics = train(trial_cfg, data_dir, model, run_dir, callbacks=callbacks)
                except TrainError as exc:
                    if not (run_dir / PRUNED_FILE).exists():
                        raise
                    pruned = str(exc.__cause__ or exc)
                    mlflow.set_tag("fm_spark.trial_state", "pruned")
                else:
                    mlflow.set_tag("fm_spark.trial_state", "complete")
                    mlflow.log_metrics(
                        {
                            f"{split}_{k}": float(v)
                            for split in ("valid", "test")
                            for k, v in (metrics.get(split) or {}).items()
                            if isinstance(v, int | float)
                        }
                    )
            if pruned is not None:
                raise optuna.TrialPruned(pruned)
            return float(metrics["valid"][spec.metric])

        missing = max(trials - before, 0)
        if missing:
            study.optimize(objective, n_trials=missing, timeout=timeout, catch=(TrainError,))
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not finished:
            raise TrainError(f"study {name}: no trial finished (see the trials' MLflow runs)")
        best = study.best_trial
        best_params = config_keys(best.params, model)
        overlay_path = output / BEST_FILE
        write_text_atomic(overlay_path, yaml.safe_dump(_overlay(best_params), sort_keys=True))
        mlflow.set_tags({f"best.{k}": str(v) for k, v in best_params.items()})
        mlflow.set_tag("best.trial", str(best.number))
        mlflow.log_metric(f"best_valid_{spec.metric}", float(best.value), step=len(study.trials))
        mlflow.log_artifact(str(overlay_path))
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.trials:
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    return {
        "study": name,
        "storage": storage,
        "mlflow_parent_run_id": parent.info.run_id,
        "trials": counts,
        "trials_run": len(study.trials) - before if missing else 0,
        "best_trial": best.number,
        f"best_valid_{spec.metric}": float(best.value),
        "best_params": best_params,
        "params_file": str(overlay_path),
    }


def _merged(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    from fm_spark.config import _set_dotted

    data = json.loads(json.dumps(base))
    for key, value in params.items():
        _set_dotted(data, key, value)
    return data
