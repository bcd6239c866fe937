"""``.venv/bin/spark-submit jobs/featurize.py`` end to end, in its own JVM, as a scheduler would
run it: from another folder, with a PATH that lacks the venv (its ``python3`` has no pyspark)."""

from __future__ import annotations

import json
import os
import re
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
    if "fm-spark-submit" not in SPARK_SUBMIT.read_text(errors="replace"):
        pytest.fail(f"{SPARK_SUBMIT} is pip's launcher: run `make setup` (it binds it to the venv)")
    env = _without_venv(os.environ)
    cmd = [str(SPARK_SUBMIT), "--master", "local[1]", str(ROOT / "jobs" / "featurize.py")]
    cmd += ["--config", str(config), "--input", str(src), "--output", str(out)]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # The job's own progress at INFO on the console, Spark's INFO flood not. (spark-submit's
    # PythonRunner merges the driver's stderr into its stdout: the logs arrive there.)
    console = done.stdout + done.stderr
    assert re.search(r"INFO fm_spark\.features\.job: featurize: parse done in \d", console)
    assert "featurize: published" in console, console[-3000:]
    spark_info = [line for line in console.splitlines() if re.search(r" INFO (?!fm_spark)", line)]
    assert spark_info == [], spark_info[:5]
    assert (out / "_SUCCESS").exists()
    summary_lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(summary_lines) == 1, done.stdout
    summary = json.loads(summary_lines[0])
    # With only cat and cnt, the lines whose only fault is a float field are good rows.
    assert summary["status"] == "ok" and summary["rows_quarantined"] == len(BAD) - 3
    assert summary["rows_read"] == len(mini_lines()) - 1  # minus the header
    assert summary == json.loads((out / "summary.json").read_text())


def _without_venv(environ: dict[str, str]) -> dict[str, str]:
    """The caller's environment as if the venv were not activated."""
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in environ.items() if not k.startswith(("PYSPARK_", "SPARK_"))}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    kept = [p for p in environ.get("PATH", "").split(os.pathsep) if p]
    env["PATH"] = os.pathsep.join(p for p in kept if Path(p).resolve() != Path(venv_bin).resolve())
    return env


def test_the_path_lacks_the_venv():
    """Guards the test above: the python3 it finds on PATH is not the venv's."""
    env = _without_venv(os.environ)
    found = subprocess.run(["sh", "-c", "command -v python3 || true"], env=env,
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert Path(found).parent != Path(sys.executable).parent
