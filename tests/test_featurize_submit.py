"""``spark-submit jobs/featurize.py`` end to end, in its own JVM (as a scheduler would run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from featurize_cases import BAD, mini_config, mini_lines, write_lines

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


@pytest.mark.slow
def test_spark_submit_featurize_runs_end_to_end(tmp_path):
    src = write_lines(tmp_path / "in" / "mini.csv", mini_lines())
    config = tmp_path / "mini.yaml"
    # Two fields keep the job (and the JVM's warm-up) small: this test is about the launcher.
    data = mini_config().model_dump(mode="json")
    data["fields"] = [f for f in data["fields"] if f["name"] in ("cat", "cnt")]
    config.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "FM_SPARK_LOG_LEVEL": "ERROR",
    }
    cmd = [str(SPARK_SUBMIT), "--master", "local[1]", str(ROOT / "jobs" / "featurize.py")]
    cmd += ["--config", str(config), "--input", str(src), "--output", str(out)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "_SUCCESS").exists()
    summary_lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summary_lines) == 1, done.stdout
    summary = json.loads(summary_lines[0])
    # With only cat and cnt, the lines whose only fault is a float field are good rows.
    assert summary["status"] == "ok" and summary["rows_quarantined"] == len(BAD) - 3
    assert summary["rows_read"] == len(mini_lines()) - 1  # minus the header
    assert summary == json.loads((out / "summary.json").read_text())
