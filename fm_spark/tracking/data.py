"""The feature job's output as an MLflow dataset, and the feature job's own run.

A featurized directory becomes ``mlflow.data`` metadata (source = its URI, a digest, the
split sizes as profile), logged as an input of the featurize run (context ``featurize``) and
of every training run on it (context ``training``): a registered model links to the exact
data it learned from, and two runs on the same output share the digest.

The digest is a content fingerprint that needs no pass over the data: the feature map
(fields, vocab sizes, bin edges, rows and positives per split, config hash) plus the sorted
sizes of every file under the directory. Spark's part-file names carry random UUIDs, so names
are left out; a re-run on the same input gives the same digest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["data_digest", "dataset_of", "log_featurize_run"]

_SKIP = ("_SUCCESS", "summary.json")


def _fs(location: str) -> tuple[Any, str]:
    from pyarrow import fs as pafs

    from fm_spark.data.reader import dataset_url

    return pafs.FileSystem.from_uri(dataset_url(location))


def data_digest(location: str) -> str:
    """16 hex digits identifying a featurize output's content (see the module docstring)."""
    from pyarrow import fs as pafs

    fs, root = _fs(location)
    h = hashlib.sha256()
    with fs.open_input_stream(f"{root}/feature_map.json") as handle:
        h.update(handle.read())
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    sizes = []
    for info in infos:
        rel = info.path[len(root) :].lstrip("/")
        top = rel.split("/", 1)[0]
        if info.type != pafs.FileType.File or rel in _SKIP or top.startswith("."):
            continue
        sizes.append(f"{top}:{info.size}")
    h.update("\n".join(sorted(sizes)).encode())
    return h.hexdigest()[:16]


def dataset_of(location: str, name: str | None = None) -> Any:
    """An ``mlflow.data`` dataset for a featurize output (metadata only, nothing loaded)."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    from fm_spark.data.reader import dataset_url
    from fm_spark.features.feature_map import FeatureMap

    fs, root = _fs(location)
    with fs.open_input_stream(f"{root}/feature_map.json") as handle:
        fmap = FeatureMap.model_validate(json.loads(handle.read()))
    schema = Schema(
        [ColSpec("float", "label")]
        + [ColSpec("integer", c) for c in fmap.column_names]
        + [ColSpec("float", v) for v in fmap.value_columns if v]
    )
    # HTTPDatasetSource only stores the URL string; it accepts any scheme, file:// included.
    source = HTTPDatasetSource(url=dataset_url(location))
    return MetaDataset(
        source=source, name=name or fmap.dataset, digest=data_digest(location), schema=schema
    )


def log_featurize_run(
    summary: dict[str, Any], output: str, tracking_uri: str | None = None
) -> str | None:
    """One MLflow run per feature job: summary, rows per split, quarantine per reason, and the
    output as a dataset. Returns the run id (None for a failed job, which has no output)."""
    import mlflow

    from fm_spark.tracking.store import start_run

    dataset = summary.get("dataset", "dataset")
    with start_run(
        dataset,
        run_name="featurize",
        tags={"fm_spark.stage": "featurize"},
        tracking_uri=tracking_uri,
    ) as run:
        mlflow.log_params(
            {
                "input": json.dumps(summary.get("input")),
                "output": output,
                "config_hash": summary.get("config_hash"),
                "max_bad_fraction": summary.get("max_bad_fraction"),
            }
        )
        metrics = {
            "rows_read": summary.get("rows_read", 0),
            "rows_quarantined": summary.get("rows_quarantined", 0),
            "bad_fraction": summary.get("bad_fraction", 0.0),
            "duration_s": summary.get("duration_s", 0.0),
            "num_features": summary.get("num_features", 0),
        }
        metrics.update({f"rows_{k}": v for k, v in summary.get("rows_written", {}).items()})
        metrics.update(
            {f"quarantined_{k}": v for k, v in summary.get("quarantined_by_reason", {}).items()}
        )
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_dict(summary, "summary.json")
        if summary.get("status") == "ok":
            ds = dataset_of(output)
            mlflow.log_input(ds, context="featurize")
            mlflow.set_tag("fm_spark.data_digest", ds.digest)
        return run.info.run_id
