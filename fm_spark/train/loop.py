"""Compatibility names: the training loop now lives in modules with one job each.

``factory`` (model and optimizers), ``step`` (one optimizer step), ``progress``, ``evaluate``,
``failure`` (the worker-failure file), ``trainer`` (:class:`WorkerJob`, :func:`train_worker`)
and ``logs``. Import from those; this module re-exports the names callers used before.
"""

from fm_spark.train.evaluate import evaluate_split
from fm_spark.train.factory import build, make_optimizers, model_hparams
from fm_spark.train.failure import FAILURE_FILE, read_failure
from fm_spark.train.logs import setup_logging
from fm_spark.train.step import StepFn, to_device
from fm_spark.train.trainer import WorkerJob, train_worker

__all__ = [
    "FAILURE_FILE",
    "StepFn",
    "WorkerJob",
    "build",
    "evaluate_split",
    "make_optimizers",
    "model_hparams",
    "read_failure",
    "setup_logging",
    "to_device",
    "train_worker",
]
