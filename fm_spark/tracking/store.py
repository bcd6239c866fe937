"""Where runs go: the tracking URI, experiments named after datasets, and starting a run.

Embedded default: a SQLite file ``mlflow.db`` in the working directory, artifacts in
``mlruns/`` beside it; no server. ``MLFLOW_TRACKING_URI`` (or an explicit URI, the CLI's
``--tracking-uri``) points at anything MLflow accepts instead (``http://...``, another
``sqlite:///...``). For a SQLite store, new experiments keep their artifacts beside the
database file, so a temporary store (tests) keeps everything in its own folder.

This is the one place that talks to MLflow about *where*; :func:`start_run` is the function
API other stages (``fm-spark tune``'s nested runs) build on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TRACKING_URI",
    "client",
    "configure",
    "experiment_id",
    "resolve_tracking_uri",
    "start_run",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ARTIFACTS_DIR = "mlruns"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute, so
    worker processes started elsewhere write to the same file)."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    path = _sqlite_path(chosen)
    if path is not None:
        return f"sqlite:///{path.resolve()}"
    return chosen


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :])


def configure(uri: str | None = None) -> str:
    """Point this process's MLflow (tracking and registry) at ``uri``; returns it resolved."""
    import mlflow

    resolved = resolve_tracking_uri(uri)
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    os.environ["MLFLOW_TRACKING_URI"] = resolved  # child processes (workers, serve) agree
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _quiet_mlflow()
    return resolved


def client(uri: str | None = None) -> Any:
    from mlflow.tracking import MlflowClient

    resolved = configure(uri)
    return MlflowClient(tracking_uri=resolved, registry_uri=resolved)


def experiment_id(name: str, uri: str | None = None) -> str:
    """The experiment called ``name``, created on first use (artifacts beside a SQLite db)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    resolved = configure(uri)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    path = _sqlite_path(resolved)
    if path is not None:
        location = (path.parent / ARTIFACTS_DIR).resolve().as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created by a concurrent process meanwhile
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def start_run(
    experiment: str,
    run_name: str | None = None,
    run_id: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    tracking_uri: str | None = None,
) -> Iterator[Any]:
    """``with start_run("criteo", run_name="ffm") as run:`` -- an active MLflow run.

    ``run_id`` continues an existing run (a resumed training); ``nested=True`` opens a child
    of the active run (one trial of a sweep). The run ends FINISHED, or FAILED on an error.
    """
    import mlflow

    exp = experiment_id(experiment, tracking_uri)
    kwargs: dict[str, Any] = {"nested": nested}
    if run_id is not None:
        kwargs["run_id"] = run_id
    else:
        kwargs.update(experiment_id=exp, run_name=run_name, tags=tags)
    with mlflow.start_run(**kwargs) as run:
        if run_id is not None and tags:
            mlflow.set_tags(tags)
        yield run


def _quiet_mlflow() -> None:
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
