"""Logging the pyfunc into the active run, and registering it as a new ``challenger``.

Requirements are given, not inferred: inference would load the model in a subprocess at
log time, and the package's own pins are what serving needs anyway.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["CHALLENGER", "CHAMPION", "TAG_PREFIX", "log_pyfunc", "pip_requirements"]

CHALLENGER = "challenger"
CHAMPION = "champion"
TAG_PREFIX = "fm_spark."
_PINNED = ("torch", "numpy", "pandas", "pyarrow", "pydantic", "xxhash", "PyYAML", "mlflow")


def pip_requirements() -> list[str]:
    out = []
    for name in _PINNED:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def log_pyfunc(
    data_dir: str,
    run_dir: Path,
    bundle_dir: Path,
    artifact_name: str = "model",
    register: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> tuple[Any, Any]:
    """Build the bundle, log the pyfunc (signature + input example); register if asked.

    Returns the ``ModelInfo`` and the :class:`~fm_spark.registry.scorer.Scorer` of the
    bundle (the caller scores plots with exactly what was logged).
    """
    import mlflow

    from fm_spark.registry.pyfunc import CTRModel, build_bundle, input_example, signature
    from fm_spark.registry.scorer import Scorer
    from fm_spark.tracking.data import data_digest

    artifacts = build_bundle(data_dir, run_dir, bundle_dir)
    config = Path(run_dir) / "config.yaml"
    if config.exists():
        artifacts["config"] = str(config)
    scorer = Scorer(artifacts["features"], artifacts["spec"], artifacts["weights"])
    columns = scorer.encoder.columns
    info = mlflow.pyfunc.log_model(
        name=artifact_name,
        python_model=CTRModel(),
        artifacts=artifacts,
        signature=signature(columns),
        input_example=input_example(columns),
        pip_requirements=pip_requirements(),
        registered_model_name=register,
    )
    if register:
        from fm_spark.tracking.store import client

        c = client()
        version = str(info.registered_model_version)
        tags = {
            "data_digest": data_digest(data_dir),
            "config_hash": (metrics or {}).get("config_hash", ""),
            "model": scorer.model_name,
            "run_id": mlflow.active_run().info.run_id,
            "data_dir": data_dir,
        }
        for k, v in ((metrics or {}).get("test") or {}).items():
            tags[f"test_{k}"] = f"{v:.6g}" if isinstance(v, float) else str(v)
        for k, v in tags.items():
            c.set_model_version_tag(register, version, f"{TAG_PREFIX}{k}", str(v))
        c.set_registered_model_alias(register, CHALLENGER, version)
    return info, scorer
