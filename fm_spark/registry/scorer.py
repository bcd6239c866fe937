"""Raw rows -> click probabilities with one model bundle: the serving encoder plus the weights.

A *bundle* is a directory laid out as the registered model's artifacts are::

    BUNDLE/features/   feature_map.json, vocab/, _SUCCESS (copied from the feature job output)
    BUNDLE/model.json  {"model": "ffm", "hyperparameters": {...}, "format_version": 1}
    BUNDLE/model.pt    the state dict, read with ``torch.load(weights_only=True)``

:class:`Scorer` is what every serving path runs: the MLflow pyfunc, ``fm-spark score``'s
``mapInPandas`` and ``fm-spark promote``. It imports neither pyspark nor mlflow, so a
scoring process needs only numpy, pandas, pyarrow and torch.

A row that cannot be encoded never gets made-up ids: its probability is NaN and ``reason``
holds the quarantine reason code (the same codes as the feature job's quarantine); the
others are scored and have ``reason`` None. A frame's label column is ignored (scoring does
not know outcomes); in raw lines the label is part of the line, and a missing one is fine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fm_spark.features.encoder import EncodedBatch, FeatureEncoder
from fm_spark.features.feature_map import FeatureMap

__all__ = [
    "FEATURES_DIR",
    "LINE_COLUMN",
    "MODEL_SPEC_FILE",
    "PROBABILITY",
    "REASON",
    "WEIGHTS_FILE",
    "Scorer",
    "write_model_spec",
]

FEATURES_DIR = "features"
MODEL_SPEC_FILE = "model.json"
WEIGHTS_FILE = "model.pt"
LINE_COLUMN = "line"  # a single column of raw log lines
PROBABILITY = "probability"
REASON = "reason"
_FORMAT_VERSION = 1


def write_model_spec(path: str | Path, model: str, hyperparameters: dict[str, Any]) -> Path:
    """What :class:`Scorer` needs to rebuild the module before loading the weights."""
    path = Path(path)
    spec = {"format_version": _FORMAT_VERSION, "model": model, "hyperparameters": hyperparameters}
    path.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


class Scorer:
    """Encoder + torch module for one bundle; :meth:`score` takes raw rows, never fails for one."""

    def __init__(self, features_dir: str | Path, spec_file: str | Path, weights: str | Path):
        from fm_spark.models import build_model

        self.encoder = FeatureEncoder.load(features_dir)
        spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
        if spec.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"{spec_file}: unknown model spec version {spec.get('format_version')}"
            )
        self.model_name: str = spec["model"]
        params = {**spec["hyperparameters"], "sparse": False}  # inference: dense lookups
        self.net = build_model(self.model_name, self.encoder.feature_map, **params)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()

    @classmethod
    def load(cls, bundle: str | Path) -> Scorer:
        root = Path(bundle)
        return cls(root / FEATURES_DIR, root / MODEL_SPEC_FILE, root / WEIGHTS_FILE)

    @property
    def feature_map(self) -> FeatureMap:
        return self.encoder.feature_map

    @property
    def label_column(self) -> str:
        return self.encoder.feature_map.label_column

    # -- encoding --------------------------------------------------------------------------
    def encode(self, frame: pd.DataFrame) -> EncodedBatch:
        """A frame of raw source columns, or a single ``line`` column of raw log lines."""
        if LINE_COLUMN in frame.columns and LINE_COLUMN not in self.encoder.columns:
            lines = [v if isinstance(v, str | bytes) else "" for v in frame[LINE_COLUMN]]
            return self.encoder.encode_lines(lines, require_label=False)
        records = frame
        if self.label_column in frame.columns:
            records = frame.drop(columns=[self.label_column])
        return self.encoder.encode_records(records, require_label=False)

    @staticmethod
    def reasons(frame: pd.DataFrame, batch: EncodedBatch) -> np.ndarray:
        """One reason per input row (None where encoded), as the encoder reports them."""
        return np.asarray(batch.reasons, dtype=object)

    # -- scoring ---------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        if len(ids) == 0:
            return np.zeros(0, dtype=np.float32)
        out = self.net(torch.from_numpy(ids), torch.from_numpy(values))
        return out.float().numpy()

    def score(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``probability`` (float64, NaN where not encoded) and ``reason`` per input row."""
        frame = frame.reset_index(drop=True)
        batch = self.encode(frame)
        prob = np.full(len(frame), np.nan, dtype=np.float64)
        z = self.logits(batch.ids, batch.values).astype(np.float64)
        prob[batch.index] = 1.0 / (1.0 + np.exp(-z))
        return pd.DataFrame({PROBABILITY: prob, REASON: self.reasons(frame, batch)})
