"""Serving parity for the other shipped configs' formats: Avazu (CSV with a header, YYMMDDHH
transforms, hashed fields, time split) and MovieLens (TSV with a header, quantile bins, a
multi-valued field, time split), on small generated logs.

For each: the test split's raw rows re-derived from the log get exactly the feature job's
ids, the registered pyfunc's probabilities equal the training-time weights' on those ids,
and ``fm-spark score`` gives the pyfunc's probabilities (1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

ROWS = 1200
ATOL = 1e-6
OVERRIDES = [
    "train.epochs=1",
    "train.batch_size=128",
    "train.device=cpu",
    "output.row_group_rows=200",
    "encoding.min_count=2",
]


def _avazu_rows(rng: np.random.Generator, columns: list[str]) -> list[list[str]]:
    rows = []
    for i in range(ROWS):
        day, hour = 21 + i * 9 // ROWS, int(rng.integers(0, 24))
        row = {c: f"{c[:3]}{rng.integers(0, 6)}" for c in columns}
        row.update(id=str(10_000 + i), hour=f"1410{day:02d}{hour:02d}")
        row["click"] = "1" if row["site_id"] in ("sit0", "sit1") and rng.random() < 0.7 else "0"
        if i % 50 == 0:
            row["app_id"] = ""  # missing
        rows.append([row[c] for c in columns])
    return rows


def _movielens_rows(rng: np.random.Generator, columns: list[str]) -> list[list[str]]:
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    rows = []
    for i in range(ROWS):
        picked = rng.choice(genres, size=int(rng.integers(0, 4)), replace=False)
        row = {
            "timestamp": str(880_000_000 + i * 37),
            "user_id": f"u{rng.integers(0, 40)}",
            "item_id": f"i{rng.integers(0, 60)}",
            "age": str(rng.integers(18, 70)),
            "gender": "MF"[int(rng.integers(0, 2))],
            "occupation": f"occ{rng.integers(0, 8)}",
            "zip_code": f"{rng.integers(10_000, 99_999)}",
            "release_year": str(rng.integers(1950, 2000)),
            "genres": "|".join(picked),
        }
        row["label"] = "1" if "Drama" in picked or rng.random() < 0.2 else "0"
        rows.append([row[c] for c in columns])
    return rows


FORMATS = {"avazu": _avazu_rows, "movielens": _movielens_rows}


@pytest.fixture(scope="module", params=sorted(FORMATS))
def trained(request, spark, mlflow_store, tmp_path_factory):
    from fm_spark.config import load_config
    from fm_spark.features.job import featurize
    from fm_spark.tracking import train_tracked

    name = request.param
    root = tmp_path_factory.mktemp(name)
    cfg = load_config(Path(f"conf/{name}.yaml").resolve(), OVERRIDES)
    sep = cfg.input.sep
    rows = FORMATS[name](np.random.default_rng(11), cfg.input.columns)
    log = root / f"{name}.log"
    lines = [sep.join(cfg.input.columns), *(sep.join(r) for r in rows), "not a row"]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    featurize(cfg, str(log), str(root / "features"), spark=spark)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = train_tracked(
            cfg, str(root / "features"), "fm", root / "run", register=f"fmt-{name}"
        )
    finally:
        torch.set_num_threads(threads)
    return {"name": name, "cfg": cfg, "log": log, "root": root, "result": result}


def test_pyfunc_equals_training_and_ids_equal_the_feature_job(trained, spark):
    import mlflow.pyfunc

    from fm_spark.features.feature_map import FeatureMap
    from fm_spark.registry.holdout import LABEL_COLUMN, split_rows
    from fm_spark.tracking.predictions import predict_split
    from fm_spark.train.loop import build

    cfg, root = trained["cfg"], trained["root"]
    fmap = FeatureMap.load(root / "run")
    net = build(cfg, "fm", fmap, dense_only=True)
    net.load_state_dict(torch.load(root / "run" / "model.pt", weights_only=True))
    net.eval()
    ref = predict_split(net, fmap, str(root / "features" / "test"))
    holdout = split_rows(spark, cfg, str(trained["log"]), "test").toPandas()
    holdout = holdout.drop(columns=[LABEL_COLUMN])
    assert len(holdout) == len(ref.ids) > 0
    model = mlflow.pyfunc.load_model(f"models:/fmt-{trained['name']}@challenger")
    batch = model.unwrap_python_model().scorer.encode(holdout)
    assert len(batch) == len(holdout)
    a, b = np.lexsort(ref.ids.T[::-1]), np.lexsort(batch.ids.T[::-1])
    np.testing.assert_array_equal(batch.ids[b], ref.ids[a])
    np.testing.assert_array_equal(batch.values[b], ref.values[a])
    prob = model.predict(holdout)["probability"].to_numpy()
    np.testing.assert_allclose(prob[batch.index][b], ref.probabilities[a], atol=ATOL)


def test_batch_score_equals_the_pyfunc(trained, tmp_path):
    import mlflow.pyfunc

    from fm_spark.cli import main

    cfg, name = trained["cfg"], trained["name"]
    uri = f"models:/fmt-{name}@challenger"
    out = tmp_path / "scored"
    keep = [x for c in cfg.input.columns for x in ("--keep", c)]
    args = ["score", "--model", uri, "--input", str(trained["log"]), "--output", str(out)]
    result = CliRunner().invoke(main, [*args, *keep])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["rows_scored"] == ROWS and summary["rows_quarantined"] == 1
    scored = pd.read_parquet(out / "scores")
    raw = scored[cfg.input.columns]
    expected = mlflow.pyfunc.load_model(uri).predict(raw)
    assert expected["reason"].isna().all()
    np.testing.assert_allclose(scored["probability"], expected["probability"], atol=ATOL)
