"""The registered model: a pyfunc that scores raw log rows, aliases, promotion, look-ups.

``load_model(NAME, alias="champion")`` returns the pyfunc; ``predict`` takes raw rows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_model"]


def load_model(
    name: str,
    alias: str | None = "champion",
    version: str | int | None = None,
    tracking_uri: str | None = None,
) -> Any:
    """The pyfunc of ``models:/NAME@alias`` (or ``models:/NAME/version``)."""
    import mlflow.pyfunc

    from fm_spark.tracking.store import configure

    configure(tracking_uri)
    uri = f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"
    return mlflow.pyfunc.load_model(uri)
