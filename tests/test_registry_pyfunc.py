"""The registered pyfunc: raw rows in (frames or lines), probability + reason out, no Spark."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
from mlflow_support import MODEL_NAME


def _lines(ctr_data, n=400):
    return [b.decode("utf-8", "replace") for b in ctr_data.log.read_bytes().splitlines()[:n]]


def _records(lines, columns):
    parts = [line.split("\t") for line in lines]
    return pd.DataFrame([p for p in parts if len(p) == len(columns)], columns=columns)


def test_frames_and_lines_agree_and_bad_rows_get_reasons(registered, ctr_data):
    from fm_spark.registry import load_model

    model = load_model(MODEL_NAME, alias="challenger")
    columns = ctr_data.config().input.columns
    lines = _lines(ctr_data)
    by_line = model.predict(pd.DataFrame({"line": lines}))
    assert list(by_line.columns) == ["probability", "reason"]
    assert len(by_line) == len(lines)
    good = by_line["reason"].isna().to_numpy()
    assert np.isfinite(by_line["probability"][good]).all()
    assert by_line["probability"][~good].isna().all()
    assert set(by_line["reason"][~good]) <= {
        "wrong_column_count",
        "bad_int",
        "undecodable",
        "bad_label",
    }

    records = _records(lines, columns)
    records.loc[3, "I2"] = "12x"  # an integer field that does not parse
    records.loc[5, "label"] = "maybe"  # the label is ignored in a frame
    by_record = model.predict(records)
    assert by_record.loc[3, "reason"] == "bad_int"
    assert np.isnan(by_record.loc[3, "probability"])
    assert by_record.loc[5, "reason"] is None
    without_label = model.predict(records.drop(columns=["label"]))
    np.testing.assert_array_equal(
        without_label["probability"].to_numpy(), by_record["probability"].to_numpy()
    )
    # the same good rows score the same whether they come as lines or as columns
    ok_lines = [line for line in lines if len(line.split("\t")) == len(columns)]
    ok = (
        by_line["reason"]
        .isna()
        .to_numpy()[[i for i, line in enumerate(lines) if len(line.split("\t")) == len(columns)]]
    )
    ok[[3, 5]] = False
    ref = model.predict(pd.DataFrame({"line": ok_lines}))["probability"].to_numpy()
    np.testing.assert_allclose(by_record["probability"].to_numpy()[ok], ref[ok], atol=1e-12)


def test_signature_and_input_example_are_logged(registered):
    import mlflow

    from fm_spark.tracking import client

    version = client().get_model_version_by_alias(MODEL_NAME, "challenger")
    info = mlflow.models.get_model_info(f"models:/{MODEL_NAME}/{version.version}")
    names = info.signature.inputs.input_names()
    assert "line" in names and "C26" in names and "label" in names
    assert info.signature.outputs.input_names() == ["probability", "reason"]
    assert info.saved_input_example_info is not None


_NO_PYSPARK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pyspark" or name.startswith("pyspark."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, Block())
import json
import pandas as pd
from fm_spark.registry import load_model
model = load_model(NAME, alias="challenger")
out = model.predict(pd.DataFrame({"line": LINES}))
assert "pyspark" not in sys.modules
print(json.dumps({"n": len(out), "scored": int(out["reason"].isna().sum())}))
"""


def test_loads_and_predicts_where_pyspark_cannot_be_imported(registered, ctr_data):
    lines = _lines(ctr_data, 50)
    code = _NO_PYSPARK.replace("NAME", repr(MODEL_NAME)).replace("LINES", repr(lines))
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["n"] == 50 and result["scored"] > 40
