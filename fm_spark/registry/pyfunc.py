"""The MLflow pyfunc flavour of a trained model: it carries its own featurizer.

Artifacts (see :mod:`.scorer`): the feature job's ``feature_map.json``, ``vocab/`` and
``_SUCCESS`` under ``features``, the model spec and the weights. ``predict`` takes raw rows
(a frame of the dataset's input columns as strings, label optional, or a single ``line``
column of raw log lines) and returns ``probability`` and ``reason`` per row.

Nothing here imports pyspark: a serving process (``mlflow models serve``, a notebook, a
batch job's executor) needs only the package's serving side. MLflow itself does
``try: import pyspark`` (``mlflow.types.schema``) wherever pyspark is installed, so the
``PythonModel`` subclass is built on first use (:func:`__getattr__`): importing this module
loads neither MLflow nor, through it, pyspark. MLflow's loader, which has imported MLflow
already, finds the class by name as usual; a serving image without pyspark loads and
predicts all the same (``tests/test_registry_pyfunc.py`` blocks pyspark).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from fm_spark.registry.scorer import (
    FEATURES_DIR,
    LINE_COLUMN,
    MODEL_SPEC_FILE,
    PROBABILITY,
    REASON,
    WEIGHTS_FILE,
    Scorer,
)

# CTRModel is served by the module __getattr__ below.
__all__ = ["ARTIFACT_KEYS", "CTRModel", "build_bundle", "input_example", "signature"]  # noqa: F822

ARTIFACT_KEYS = {FEATURES_DIR: FEATURES_DIR, "spec": MODEL_SPEC_FILE, "weights": WEIGHTS_FILE}
_FEATURE_FILES = ("feature_map.json", "_SUCCESS")


_classes: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    """``CTRModel``, built once on first access (module ``__getattr__``, PEP 562)."""
    if name != "CTRModel":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _classes:
        _classes[name] = _ctr_model_class()
    return _classes[name]


def _ctr_model_class() -> type:
    import mlflow.pyfunc

    class CTRModel(mlflow.pyfunc.PythonModel):
        """Raw log rows in, click probability and a per-row reason out."""

        def load_context(self, context: Any) -> None:
            arts = context.artifacts
            self.scorer = Scorer(arts[FEATURES_DIR], arts["spec"], arts["weights"])

        def predict(
            self, context: Any, model_input: pd.DataFrame, params: Any = None
        ) -> pd.DataFrame:
            if not isinstance(model_input, pd.DataFrame):
                model_input = pd.DataFrame(model_input)
            return self.scorer.score(model_input)

    # Pickled by reference (module + name), as a class defined at module level would be.
    CTRModel.__qualname__ = "CTRModel"
    return CTRModel


def build_bundle(features_dir: str, run_dir: str | Path, target: str | Path) -> dict[str, str]:
    """Lay out the artifacts in ``target``: what the pyfunc's ``artifacts=`` argument takes.

    ``features_dir`` is the feature job's output (local or any pyarrow filesystem URI); only
    the feature map, the vocabularies and the ``_SUCCESS`` marker are copied, not the data.
    """
    from pyarrow import fs as pafs

    from fm_spark.data.reader import dataset_url

    target = Path(target)
    feats = target / FEATURES_DIR
    feats.mkdir(parents=True, exist_ok=True)
    src_fs, root = pafs.FileSystem.from_uri(dataset_url(features_dir))
    local = pafs.LocalFileSystem()
    for name in _FEATURE_FILES:
        pafs.copy_files(f"{root}/{name}", str(feats / name), src_fs, local)
    if src_fs.get_file_info(f"{root}/vocab").type == pafs.FileType.Directory:
        pafs.copy_files(f"{root}/vocab", str(feats / "vocab"), src_fs, local)
    run_dir = Path(run_dir)
    shutil.copyfile(run_dir / WEIGHTS_FILE, target / WEIGHTS_FILE)
    shutil.copyfile(run_dir / MODEL_SPEC_FILE, target / MODEL_SPEC_FILE)
    return {key: str(target / rel) for key, rel in ARTIFACT_KEYS.items()}


def signature(columns: list[str]) -> Any:
    """Every input column an optional string (so both input forms validate) plus ``line``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    names = [*columns, *([LINE_COLUMN] if LINE_COLUMN not in columns else [])]
    inputs = Schema([ColSpec("string", name, required=False) for name in names])
    outputs = Schema([ColSpec("double", PROBABILITY), ColSpec("string", REASON, required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(columns: list[str], rows: pd.DataFrame | None = None) -> pd.DataFrame:
    """A few raw rows (from the data when given, else one row with every value missing)."""
    if rows is not None and len(rows):
        return rows[[c for c in columns if c in rows.columns]].head(3).reset_index(drop=True)
    return pd.DataFrame({c: [None] for c in columns}, dtype=object)
