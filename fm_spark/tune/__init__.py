"""``fm-spark tune``: Optuna search over training settings, each trial a nested MLflow run.

from fm_spark.tune import load_ranges, tune
tune(cfg, data_dir, "fm", load_ranges("conf/tune.yaml"), trials=20, output=Path("runs/t"))
"""

from fm_spark.tune.space import DEFAULT_RANGES, TuneSpec, load_ranges
from fm_spark.tune.study import BEST_FILE, PruneOnEpoch, study_storage, tune

__all__ = [
    "BEST_FILE",
    "DEFAULT_RANGES",
    "PruneOnEpoch",
    "TuneSpec",
    "load_ranges",
    "study_storage",
    "tune",
]
