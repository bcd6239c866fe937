"""Probabilities of a trained model on a featurized split, read with plain pyarrow.

Used for the ROC and reliability plots of a training run and by the parity tests (the
"training-time" side: the feature job's ids through the trained weights). Reads at most
``max_rows`` rows, in file order, a row group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fm_spark.features.feature_map import FeatureMap

__all__ = ["SplitPredictions", "predict_split"]


@dataclass
class SplitPredictions:
    ids: np.ndarray  # int64 [n, columns]
    values: np.ndarray  # float32 [n, columns]
    labels: np.ndarray  # float32 [n]
    probabilities: np.ndarray  # float64 [n]


def predict_split(
    net: Any, fmap: FeatureMap, split_url: str, max_rows: int | None = None
) -> SplitPredictions:
    """``net`` (a CTR model in eval mode) over the Parquet of ``split_url``."""
    import pyarrow.dataset as pads
    import torch

    from fm_spark.data.reader import dataset_url

    ds = pads.dataset(dataset_url(split_url).replace("file://", ""), format="parquet")
    id_cols = fmap.column_names
    val_cols = [v for v in fmap.value_columns if v]
    ids, values, labels = [], [], []
    seen = 0
    for batch in ds.to_batches(columns=["label", *id_cols, *val_cols], batch_size=65536):
        n = batch.num_rows
        if max_rows is not None and seen + n > max_rows:
            batch, n = batch.slice(0, max_rows - seen), max_rows - seen
        cols = {
            name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names
        }
        ids.append(np.stack([cols[c].astype(np.int64) for c in id_cols], axis=1))
        v = np.ones((n, len(id_cols)), dtype=np.float32)
        for j, vc in enumerate(fmap.value_columns):
            if vc:
                v[:, j] = cols[vc].astype(np.float32)
        values.append(v)
        labels.append(cols["label"].astype(np.float32))
        seen += n
        if max_rows is not None and seen >= max_rows:
            break
    width = len(id_cols)
    all_ids = np.concatenate(ids) if ids else np.zeros((0, width), np.int64)
    all_values = np.concatenate(values) if values else np.zeros((0, width), np.float32)
    all_labels = np.concatenate(labels) if labels else np.zeros(0, np.float32)
    probs = np.zeros(0, np.float64)
    if len(all_ids):
        with torch.no_grad():
            z = torch.cat(
                [
                    net(
                        torch.from_numpy(all_ids[i : i + 65536]),
                        torch.from_numpy(all_values[i : i + 65536]),
                    )
                    for i in range(0, len(all_ids), 65536)
                ]
            )
        probs = 1.0 / (1.0 + np.exp(-z.float().numpy().astype(np.float64)))
    return SplitPredictions(all_ids, all_values, all_labels, probs)
