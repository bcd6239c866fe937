"""``fm-spark promote``: score challenger and champion on one holdout, move ``champion`` or not.

The gate (:class:`PromotionPolicy`, ``conf/registry.yaml``): the challenger must beat the
champion on ``metric`` by ``min_improvement`` and must not be worse on logloss by more than
``logloss_tolerance``; the first version of a model becomes champion unopposed. Every
decision is written as tags on the challenger's version (``fm_spark.promotion`` holds the
latest, ``fm_spark.promotion.<when>`` each one): what it was compared with, both sets of
metrics, the verdict and why.

Race safety: the read-champion / decide / move-alias section runs under a lock that is a
registered model named ``<NAME>.promotion-lock``. Creating a registered model is an atomic
insert in every MLflow store (a unique name), so exactly one process holds it; the others
wait. A lock older than ``lock_timeout_s`` is taken as left behind by a killed process and
broken. Two promotions at once therefore end with one champion, chosen by comparing with
whichever champion was current when each got the lock, and both decisions recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from fm_spark.registry.model import CHALLENGER, CHAMPION, TAG_PREFIX

__all__ = [
    "LOCK_SUFFIX",
    "PromotionError",
    "PromotionPolicy",
    "decide",
    "holdout_metrics",
    "load_policy",
    "promote",
    "promotion_lock",
]

LOCK_SUFFIX = ".promotion-lock"
LOCK_TAG = f"{TAG_PREFIX}lock"
DEFAULT_POLICY = Path("conf/registry.yaml")
_HIGHER_IS_BETTER = {"auc": True, "logloss": False, "normalized_entropy": False}


class PromotionError(RuntimeError):
    """Something an operator must fix: no such model or version, no holdout, a stuck lock."""


class PromotionPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: Literal["auc", "logloss", "normalized_entropy"] = "auc"
    min_improvement: float = Field(default=0.0005, ge=0)
    logloss_tolerance: float = Field(default=0.001, ge=0)
    holdout_max_rows: int = Field(default=200_000, gt=0)
    lock_timeout_s: float = Field(default=600, gt=0)


def load_policy(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()):
    """The YAML policy (``conf/registry.yaml`` when present, else defaults) + ``--set``."""
    from fm_spark.config import ConfigError, apply_overrides

    path = Path(path) if path else DEFAULT_POLICY
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    elif path != DEFAULT_POLICY:
        raise ConfigError(f"registry config {path} does not exist")
    apply_overrides(data, overrides)
    try:
        return PromotionPolicy.model_validate(data)
    except ValueError as exc:
        raise ConfigError(f"invalid registry config {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# scoring and the decision


def holdout_metrics(model: Any, frame: Any, labels: np.ndarray) -> dict[str, float]:
    """AUC / logloss / normalized entropy / calibration of a pyfunc on raw holdout rows."""
    from fm_spark.train.metrics import calibration, log_loss, normalized_entropy, roc_auc

    out = model.predict(frame)
    p = out["probability"].to_numpy(dtype=np.float64)
    scored = np.isfinite(p)
    y, p = labels[scored], p[scored]
    ll = log_loss(y, p)
    return {
        "rows": int(scored.sum()),
        "unscored": int((~scored).sum()),
        "auc": roc_auc(y, p),
        "logloss": ll,
        "normalized_entropy": normalized_entropy(ll, float(y.mean()) if len(y) else 0.0),
        "calibration": calibration(p, y) if len(y) else float("nan"),
    }


def decide(
    policy: PromotionPolicy, challenger: dict[str, float], champion: dict[str, float] | None
) -> tuple[bool, str]:
    """(promote?, why) for the challenger's and champion's holdout metrics."""
    if champion is None:
        return True, "no champion yet: the first version becomes champion"
    m = policy.metric
    sign = 1.0 if _HIGHER_IS_BETTER[m] else -1.0
    gain = sign * (challenger[m] - champion[m])
    ll_worse = challenger["logloss"] - champion["logloss"]
    if not np.isfinite(gain):
        return False, f"{m} is not finite on the holdout"
    if gain < policy.min_improvement:
        return False, f"{m} gain {gain:+.6f} < min_improvement {policy.min_improvement:g}"
    if ll_worse > policy.logloss_tolerance:
        return False, (
            f"{m} gain {gain:+.6f}, but logloss worse by {ll_worse:.6f} > logloss_tolerance "
            f"{policy.logloss_tolerance:g}"
        )
    return (
        True,
        f"{m} gain {gain:+.6f} >= {policy.min_improvement:g}; logloss change {ll_worse:+.6f}",
    )


# --------------------------------------------------------------------------------------------
# the lock


class promotion_lock:
    """Exclusive section per registered model, across processes and machines."""

    def __init__(self, client: Any, name: str, timeout_s: float, poll_s: float = 0.25):
        self.client, self.name, self.lock = client, name, name + LOCK_SUFFIX
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"

    def __enter__(self) -> promotion_lock:
        from mlflow.exceptions import MlflowException

        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                self.client.create_registered_model(
                    self.lock,
                    tags={
                        LOCK_TAG: "1",
                        f"{TAG_PREFIX}owner": self.owner,
                        f"{TAG_PREFIX}acquired_at": f"{time.time():.3f}",
                    },
                    description=f"held while `fm-spark promote` decides {self.name}@champion",
                )
                return self
            except MlflowException as exc:
                if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                    raise
            self._break_if_stale()
            if time.monotonic() > deadline:
                raise PromotionError(
                    f"could not take the promotion lock {self.lock!r} within {self.timeout_s:g}s"
                )
            time.sleep(self.poll_s)

    def _break_if_stale(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            held = self.client.get_registered_model(self.lock)
        except MlflowException:
            return  # released meanwhile
        acquired = float(held.tags.get(f"{TAG_PREFIX}acquired_at", "0") or 0)
        if time.time() - acquired > self.timeout_s:
            with contextlib.suppress(MlflowException):
                self.client.delete_registered_model(self.lock)

    def __exit__(self, *exc: Any) -> None:
        from mlflow.exceptions import MlflowException

        try:
            held = self.client.get_registered_model(self.lock)
            if held.tags.get(f"{TAG_PREFIX}owner") == self.owner:
                self.client.delete_registered_model(self.lock)
        except MlflowException:
            pass


# --------------------------------------------------------------------------------------------
# the command


def _version(client: Any, name: str, version: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if version is not None:
            return client.get_model_version(name, str(version))
        return client.get_model_version_by_alias(name, CHALLENGER)
    except MlflowException as exc:
        what = f"version {version}" if version is not None else f"alias {CHALLENGER!r}"
        raise PromotionError(f"registered model {name!r} has no {what}: {exc.message}") from None


def _current_champion(client: Any, name: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _model_config(uri: str) -> Any:
    """The challenger's dataset config (logged with the model as ``config.yaml``)."""
    import mlflow.artifacts

    from fm_spark.config import parse_config

    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/artifacts/config.yaml")
    return parse_config(yaml.safe_load(Path(local).read_text(encoding="utf-8")), uri)


def promote(
    name: str,
    version: str | None = None,
    holdout: str | None = None,
    policy: PromotionPolicy | None = None,
    tracking_uri: str | None = None,
    spark: Any = None,
) -> dict[str, Any]:
    """Compare ``name``'s challenger (or ``version``) with its champion; returns the decision."""
    import mlflow.pyfunc

    from fm_spark.registry.holdout import LABEL_COLUMN, holdout_frame
    from fm_spark.tracking.store import client as make_client

    policy = policy or load_policy()
    client = make_client(tracking_uri)
    challenger = _version(client, name, version)
    ch_uri = f"models:/{name}/{challenger.version}"
    holdout_dir = holdout or challenger.tags.get(f"{TAG_PREFIX}data_dir")
    if not holdout_dir:
        raise PromotionError(f"{ch_uri} has no {TAG_PREFIX}data_dir tag: pass --holdout DIR")
    if spark is None:
        from fm_spark.spark import get_spark

        spark = get_spark("fm-spark-promote")
    frame = holdout_frame(spark, _model_config(ch_uri), holdout_dir, policy.holdout_max_rows)
    if frame.empty:
        raise PromotionError(f"the test split of {holdout_dir} is empty: nothing to compare on")
    labels = frame.pop(LABEL_COLUMN).to_numpy(dtype=np.float64)
    ch_metrics = holdout_metrics(mlflow.pyfunc.load_model(ch_uri), frame, labels)
    with promotion_lock(client, name, policy.lock_timeout_s):
        champion = _current_champion(client, name)
        if champion is not None and champion.version == challenger.version:
            verdict = {"promoted": False, "reason": "already the champion"}
            champ_metrics = ch_metrics
        else:
            champ_metrics = None
            if champion is not None:
                champ_uri = f"models:/{name}/{champion.version}"
                champ_metrics = holdout_metrics(mlflow.pyfunc.load_model(champ_uri), frame, labels)
            ok, why = decide(policy, ch_metrics, champ_metrics)
            verdict = {"promoted": ok, "reason": why}
        decision = {
            "name": name,
            "version": str(challenger.version),
            "compared_with": None if champion is None else str(champion.version),
            "challenger": ch_metrics,
            "champion": champ_metrics,
            "policy": policy.model_dump(),
            "holdout": {"dir": holdout_dir, "rows": len(frame)},
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            **verdict,
        }
        _record(client, name, str(challenger.version), decision)
        if verdict["promoted"]:
            client.set_registered_model_alias(name, CHAMPION, challenger.version)
        decision["champion_version"] = (
            str(challenger.version) if verdict["promoted"] else decision["compared_with"]
        )
    return decision


def _record(client: Any, name: str, version: str, decision: dict[str, Any]) -> None:
    text = json.dumps(decision, sort_keys=True, default=float)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{TAG_PREFIX}promotion"
    client.set_model_version_tag(name, version, key, text)
    client.set_model_version_tag(name, version, f"{key}.{stamp}.{os.getpid()}", text)
    client.set_model_version_tag(
        name, version, f"{key}.verdict", "promoted" if decision["promoted"] else "rejected"
    )
