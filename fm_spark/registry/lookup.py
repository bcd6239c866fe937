"""``fm-spark models list`` / ``models show NAME``: what is registered, in plain dicts.

A version is described by its aliases, the test metrics and data digest tagged at
registration, the latest promotion verdict and when it was created.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fm_spark.registry.model import TAG_PREFIX
from fm_spark.registry.promote import LOCK_TAG

__all__ = ["list_models", "show_model"]


def _when(ms: int | None) -> str | None:
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _strip(tags: dict[str, str]) -> dict[str, str]:
    return {k[len(TAG_PREFIX) :]: v for k, v in tags.items() if k.startswith(TAG_PREFIX)}


def list_models(tracking_uri: str | None = None) -> list[dict[str, Any]]:
    from fm_spark.tracking.store import client

    c = client(tracking_uri)
    out = []
    for rm in c.search_registered_models(max_results=1000):
        if rm.tags.get(LOCK_TAG):
            continue  # a promotion in progress, not a model
        aliases = dict(rm.aliases or {})
        latest = max((int(v.version) for v in rm.latest_versions or []), default=None)
        out.append(
            {
                "name": rm.name,
                "latest_version": latest,
                "aliases": aliases,
                "updated": _when(rm.last_updated_timestamp),
            }
        )
    return sorted(out, key=lambda m: m["name"])


def show_model(name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    from fm_spark.tracking.store import client

    c = client(tracking_uri)
    rm = c.get_registered_model(name)
    by_version: dict[str, list[str]] = {}
    for alias, version in (rm.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = []
    for v in c.search_model_versions(f"name = '{name}'"):
        tags = _strip(v.tags or {})
        versions.append(
            {
                "version": int(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "created": _when(v.creation_timestamp),
                "run_id": v.run_id,
                "model": tags.get("model"),
                "data_digest": tags.get("data_digest"),
                "config_hash": tags.get("config_hash"),
                "test": {k[5:]: v for k, v in tags.items() if k.startswith("test_")},
                "promotion": tags.get("promotion.verdict"),
            }
        )
    versions.sort(key=lambda v: v["version"], reverse=True)
    return {"name": name, "aliases": dict(rm.aliases or {}), "versions": versions}
