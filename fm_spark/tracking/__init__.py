"""MLflow tracking for fm-spark: where runs go, training and feature-job runs, plots.

Function API (for other stages, e.g. a tuner's nested trials)::

    from fm_spark import tracking
    tracking.configure(uri)                      # or MLFLOW_TRACKING_URI; default sqlite:///mlflow.db
    with tracking.start_run("criteo", run_name="trial-3", nested=True) as run:
        ...                                      # plain mlflow.log_* calls inside
    tracking.train_tracked(cfg, data_dir, "ffm", run_dir)   # one tracked `fm-spark train`
    tracking.log_featurize_run(summary, output)             # one tracked feature job
"""

from fm_spark.tracking.data import data_digest, dataset_of, log_featurize_run
from fm_spark.tracking.store import (
    DEFAULT_TRACKING_URI,
    client,
    configure,
    experiment_id,
    resolve_tracking_uri,
    start_run,
)
from fm_spark.tracking.training import EpochLogger, train_tracked, training_params

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EpochLogger",
    "client",
    "configure",
    "data_digest",
    "dataset_of",
    "experiment_id",
    "log_featurize_run",
    "resolve_tracking_uri",
    "start_run",
    "train_tracked",
    "training_params",
]
