"""Aliases, the champion gate, race-safe promotion (two real processes) and look-ups."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from mlflow_support import MODEL_NAME

from fm_spark.registry.promote import PromotionPolicy, decide


def test_gate_rules():
    policy = PromotionPolicy(metric="auc", min_improvement=0.001, logloss_tolerance=0.002)
    champ = {"auc": 0.70, "logloss": 0.50}
    assert decide(policy, {"auc": 0.71, "logloss": 0.50}, None)[0]
    assert decide(policy, {"auc": 0.71, "logloss": 0.501}, champ)[0]
    assert not decide(policy, {"auc": 0.7005, "logloss": 0.49}, champ)[0]  # below the margin
    assert not decide(policy, {"auc": 0.72, "logloss": 0.51}, champ)[0]  # logloss too much worse
    lower = PromotionPolicy(metric="logloss", min_improvement=0.001)
    assert decide(lower, {"auc": 0.6, "logloss": 0.49}, champ)[0]
    assert not decide(lower, {"auc": 0.9, "logloss": 0.4995}, champ)[0]


def _copy_versions(name: str, sources: list[str]) -> list[str]:
    """Register existing model versions again under ``name`` (no training needed)."""
    from fm_spark.tracking import client

    c = client()
    c.create_registered_model(name)
    out = []
    for src in sources:
        mv = c.get_model_version(MODEL_NAME, src)
        new = c.create_model_version(name, mv.source, run_id=mv.run_id, tags=mv.tags)
        out.append(str(new.version))
    return out


def test_promote_first_then_gate(registered, spark, ctr_data):
    from fm_spark.registry.promote import promote
    from fm_spark.tracking import client

    c = client()
    v1, v2 = (str(registered[m]["registered_version"]) for m in ("fm", "lr"))
    assert str(c.get_model_version_by_alias(MODEL_NAME, "challenger").version) == v2
    first = promote(MODEL_NAME, version=v1, spark=spark)
    assert first["promoted"] and first["compared_with"] is None
    assert str(c.get_model_version_by_alias(MODEL_NAME, "champion").version) == v1
    # an impossible margin: the challenger (v2) cannot pass, champion stays
    strict = PromotionPolicy(min_improvement=1.0)
    second = promote(MODEL_NAME, policy=strict, spark=spark)
    assert not second["promoted"] and second["compared_with"] == v1
    assert second["holdout"]["rows"] == registered["lr"]["test"]["rows"]
    assert str(c.get_model_version_by_alias(MODEL_NAME, "champion").version) == v1
    tags = c.get_model_version(MODEL_NAME, v2).tags
    recorded = json.loads(tags["fm_spark.promotion"])
    assert recorded["compared_with"] == v1 and recorded["promoted"] is False
    assert set(recorded["champion"]) >= {"auc", "logloss"}
    assert tags["fm_spark.promotion.verdict"] == "rejected"
    # holdout metrics of a model equal its training-time test metrics (same rows, same model)
    assert second["champion"]["auc"] == pytest.approx(registered["fm"]["test"]["auc"], abs=1e-9)


def test_two_promotions_at_once_end_consistent(registered, tmp_path):
    from fm_spark.tracking import client

    name = "race"
    v1, v2 = _copy_versions(name, [str(registered[m]["registered_version"]) for m in ("fm", "lr")])
    env = {**os.environ, "FM_SPARK_SHUFFLE_PARTITIONS": "2", "SPARK_MASTER": "local[1]"}
    cmd = [
        sys.executable,
        "-m",
        "fm_spark",
        "promote",
        "--name",
        name,
        "--set",
        "min_improvement=0",
        "--set",
        "logloss_tolerance=100",
        "--version",
    ]
    procs = [
        subprocess.Popen(
            [*cmd, v], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for v in (v1, v2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    firsts = [r for r in results if r["compared_with"] is None]
    assert len(firsts) == 1, results  # exactly one saw no champion
    first, other = firsts[0], next(r for r in results if r is not firsts[0])
    assert other["compared_with"] == first["version"]  # the second compared with the first
    c = client()
    champion = str(c.get_model_version_by_alias(name, "champion").version)
    expected = other["version"] if other["promoted"] else first["version"]
    assert champion == expected
    for r in results:
        assert "fm_spark.promotion" in c.get_model_version(name, r["version"]).tags
    assert not [m for m in c.search_registered_models() if m.name.endswith("promotion-lock")]


def test_models_list_and_show(registered):
    from fm_spark.cli import main
    from fm_spark.registry import load_model

    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    entries = [json.loads(line) for line in listed.output.strip().splitlines()]
    ctr = next(e for e in entries if e["name"] == MODEL_NAME)
    assert ctr["latest_version"] >= 2 and "challenger" in ctr["aliases"]
    shown = CliRunner().invoke(main, ["models", "show", MODEL_NAME])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    v = next(v for v in info["versions"] if v["version"] == registered["fm"]["registered_version"])
    assert v["model"] == "fm" and v["data_digest"] and "auc" in v["test"] and v["created"]
    missing = CliRunner().invoke(main, ["models", "show", "no-such-model"])
    assert missing.exit_code == 2
    assert load_model(MODEL_NAME, version=registered["fm"]["registered_version"]) is not None
