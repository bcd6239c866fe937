"""Training, the pyfunc, the REST server and ``fm-spark score`` agree on the same raw rows.

The test split's raw rows are re-derived from the log (``registry.holdout.split_rows``).
Their serving ids must equal the feature job's ``test/`` ids (100 %, compared as sorted row
sets since the feature job does not keep row order), and probabilities from training-time
weights on those ids, from the pyfunc on the raw rows, from ``mlflow models serve`` over
HTTP and from the Spark batch job must agree to 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from mlflow_support import MODEL_NAME

NAME = "parity"
ATOL = 1e-6


@pytest.fixture(scope="module")
def champion(registered) -> str:
    """``parity@champion`` = the fm version of ``ctr`` (own name: independent of test order)."""
    from fm_spark.tracking import client

    c = client()
    mv = c.get_model_version(MODEL_NAME, str(registered["fm"]["registered_version"]))
    c.create_registered_model(NAME)
    new = c.create_model_version(NAME, mv.source, run_id=mv.run_id)
    c.set_registered_model_alias(NAME, "champion", new.version)
    return f"models:/{NAME}@champion"


@pytest.fixture(scope="module")
def holdout(spark, ctr_data) -> pd.DataFrame:
    from fm_spark.registry.holdout import LABEL_COLUMN, split_rows

    frame = split_rows(spark, ctr_data.config(), str(ctr_data.log), "test").toPandas()
    return frame.drop(columns=[LABEL_COLUMN])


def test_the_holdout_drops_bad_rows_after_the_rules_projection(spark, ctr_data):
    """The rules stay in a projection, which whole-stage codegen splits into methods. Pushed
    into a filter's predicate (``where(_reason IS NULL)``) they made the row loop one method
    too long to JIT-compile: 10x slower (``quarantine.good_rows``)."""
    from fm_spark.registry.holdout import split_rows

    rows = split_rows(spark, ctr_data.config(), str(ctr_data.log), "test")
    plan = rows._jdf.queryExecution().optimizedPlan().toString()
    filters = [line for line in plan.splitlines() if line.lstrip("+-: ").startswith("Filter")]
    assert "Generate explode" in plan
    # instr(line, U+FFFD) is the first rule (undecodable): never inside a filter.
    assert not [f for f in filters if "instr(" in f], filters


def _order(ids: np.ndarray) -> np.ndarray:
    return np.lexsort(ids.T[::-1])


def test_pyfunc_equals_training_on_the_test_split(registered, ctr_data, champion, holdout):
    import mlflow.pyfunc

    from fm_spark.features.feature_map import FeatureMap
    from fm_spark.tracking.predictions import predict_split
    from fm_spark.train.loop import build

    run_dir = ctr_data.root / "runs" / "fm"
    fmap = FeatureMap.load(run_dir)
    net = build(ctr_data.config(), "fm", fmap, dense_only=True)
    net.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    net.eval()
    trained = predict_split(net, fmap, str(ctr_data.features / "test"))
    assert len(trained.ids) == len(holdout) == registered["fm"]["test"]["rows"]

    model = mlflow.pyfunc.load_model(champion)
    scorer = model.unwrap_python_model().scorer
    batch = scorer.encode(holdout)
    assert len(batch) == len(holdout)  # every test row encodes
    a, b = _order(trained.ids), _order(batch.ids)
    np.testing.assert_array_equal(batch.ids[b], trained.ids[a])  # ids: 100 %
    served = model.predict(holdout)
    assert served["reason"].isna().all()
    np.testing.assert_allclose(
        served["probability"].to_numpy()[batch.index][b], trained.probabilities[a], atol=ATOL
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rest_server_answers_like_the_pyfunc(champion, holdout, tmp_path):
    import mlflow.pyfunc

    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            champion,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(1)
        rows = holdout.head(200).copy()
        rows.loc[0, "I3"] = "not-an-int"
        body = {
            "dataframe_split": {
                "columns": list(rows.columns),
                "data": rows.astype(object).where(rows.notna(), None).values.tolist(),
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        got = pd.DataFrame(answer["predictions"])
        expected = mlflow.pyfunc.load_model(champion).predict(rows)
        assert len(got) == len(rows)
        assert got.loc[0, "reason"] == "bad_int" and pd.isna(got.loc[0, "probability"])
        np.testing.assert_allclose(
            got["probability"].to_numpy(dtype=float)[1:],
            expected["probability"].to_numpy()[1:],
            atol=ATOL,
        )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_batch_score_equals_the_pyfunc(champion, holdout, ctr_data, tmp_path, spark):
    import mlflow.pyfunc

    from fm_spark.cli import main

    columns = ctr_data.config().input.columns
    raw = tmp_path / "test.tsv"
    cells = holdout[columns].astype(object).where(holdout[columns].notna(), "")
    raw.write_text("".join("\t".join(row) + "\n" for row in cells.values.tolist()) + "1\t2\n")
    out = tmp_path / "scored"
    args = ["score", "--model", champion, "--input", str(raw), "--output", str(out)]
    result = CliRunner().invoke(main, [*args, *(x for c in columns for x in ("--keep", c))])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["rows_scored"] == len(holdout) and summary["rows_quarantined"] == 1
    assert summary["quarantined_by_reason"]["wrong_column_count"] == 1
    assert (out / "_SUCCESS").exists() and (out / "quarantine").is_dir()
    scored = pd.read_parquet(out / "scores")
    assert scored["reason"].isna().all()
    expected = holdout[columns].copy()
    expected["expected"] = mlflow.pyfunc.load_model(champion).predict(holdout)["probability"]
    key = [c for c in columns]
    merged = scored.fillna({c: "" for c in key}).merge(
        expected.fillna({c: "" for c in key}).drop_duplicates(key), on=key, how="left"
    )
    assert len(merged) == len(holdout) and merged["expected"].notna().all()
    np.testing.assert_allclose(merged["probability"], merged["expected"], atol=ATOL)
    refused = CliRunner().invoke(main, [*args])
    assert refused.exit_code == 2  # an existing output is not replaced without --overwrite


@pytest.mark.slow
def test_spark_submit_score_gives_the_pyfunc_probabilities(champion, holdout, ctr_data, tmp_path):
    """``spark-submit jobs/score.py`` as a scheduler runs it: its own JVM, the registry by URI."""
    import mlflow.pyfunc

    root = Path(__file__).resolve().parents[1]
    columns = ctr_data.config().input.columns
    rows = holdout.head(300)
    raw = tmp_path / "day.tsv"
    cells = rows[columns].astype(object).where(rows[columns].notna(), "")
    raw.write_text("".join("\t".join(row) + "\n" for row in cells.values.tolist()))
    out = tmp_path / "scored"
    submit = Path(sys.executable).parent / "spark-submit"
    cmd = [str(submit), "--master", "local[1]", str(root / "jobs" / "score.py")]
    cmd += ["--model", champion, "--input", str(raw), "--output", str(out)]
    cmd += [x for c in columns for x in ("--keep", c)]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (out / "_SUCCESS").exists()
    scored = pd.read_parquet(out / "scores").fillna({c: "" for c in columns})
    expected = rows[columns].copy()
    expected["expected"] = mlflow.pyfunc.load_model(champion).predict(rows)["probability"]
    merged = scored.merge(
        expected.fillna({c: "" for c in columns}).drop_duplicates(columns), on=columns, how="left"
    )
    assert len(merged) == len(rows) and merged["expected"].notna().all()
    np.testing.assert_allclose(merged["probability"], merged["expected"], atol=ATOL)
