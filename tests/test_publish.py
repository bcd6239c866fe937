"""The safe publish (fm_spark.features.publish): real kills at each step, two jobs on one
output, stale leases, and outputs that are not ours."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from featurize_cases import mini_config, mini_lines, write_lines
from publish_cases import MARKER, publish_version, run_job, version_of

from fm_spark.cli import main
from fm_spark.config import parse_config
from fm_spark.features.job import FeaturizeError, featurize
from fm_spark.features.publish import (
    FAULT_ENV,
    STEPS,
    OutputBusyError,
    OutputRefusedError,
    Publisher,
)

pytestmark = pytest.mark.slow

# Where the output stands after a kill at each step, and after the next run's recovery.
_NEW_VISIBLE_FROM = STEPS.index("marked")


def _siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def _marked_folders_are_complete(root: Path) -> None:
    """Whatever carries a ``_SUCCESS`` (the output or a hidden sibling) is a whole dataset."""
    for folder in root.iterdir():
        if (folder / "_SUCCESS").exists():
            version_of(folder)


def _tells_nobody_to_delete(message: str) -> None:
    assert not re.search(r"\b(delete|remove|rm|wipe)\b", message, re.I), message


@pytest.mark.parametrize("step", STEPS)
def test_kill_at_each_publish_step_keeps_the_last_good_dataset(spark, tmp_path, step):
    root = tmp_path / "root"
    root.mkdir()
    out = root / "out"
    publish_version(spark, str(out), 1)

    job = run_job(out, 2, overwrite=True, **{FAULT_ENV: f"kill@{step}"})
    _, err = job.communicate(timeout=300)
    assert job.returncode == -9, err[-2000:]  # SIGKILL: the process really died there
    _marked_folders_are_complete(root)
    new_visible = STEPS.index(step) >= _NEW_VISIBLE_FROM
    if (out / "_SUCCESS").exists():
        assert version_of(out) == (2 if new_visible else 1)
    else:  # between moving the old one aside and marking the new one
        assert step in ("old_aside", "moved", "verified")
        assert any((root / n / "_SUCCESS").exists() for n in _siblings(out))

    # The next run, even one that is refused, first recovers: the last good dataset is back.
    with pytest.raises(OutputRefusedError, match="finished dataset"):
        publish_version(spark, str(out), 3)
    assert version_of(out) == (2 if new_visible else 1)
    assert _siblings(out) == []  # staging, old copy and the dead job's lease are gone

    publish_version(spark, str(out), 3, overwrite=True)
    assert version_of(out) == 3 and _siblings(out) == []


def test_second_job_on_one_output_fails_fast_and_the_first_publishes(spark, tmp_path):
    out = tmp_path / "out"
    publish_version(spark, str(out), 1)
    release = tmp_path / "release"
    first = run_job(out, 2, overwrite=True, **{FAULT_ENV: f"wait@staged:{release}"})
    try:
        lease = tmp_path / ".out.lease"
        deadline = time.monotonic() + 240
        while not _leased(lease) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _leased(lease), first.stderr.read() if first.poll() is not None else "no lease"
        held = next(json.loads(lease.read_text()) for _ in iter(int, 1) if _leased(lease))
        assert held["pid"] == first.pid and held["host"] == socket.gethostname()

        started = time.monotonic()
        with pytest.raises(OutputBusyError) as err:
            publish_version(spark, str(out), 3, overwrite=True)
        assert time.monotonic() - started < 30  # fails at once, does not wait for the first
        message = str(err.value)
        assert "being written by another job" in message and held["job_id"] in message
        assert f"pid {first.pid}" in message

        # The feature job through the CLI, on an output a live job (that process) leases:
        # the same clear refusal, exit 2, nothing touched.
        src = write_lines(tmp_path / "in.csv", mini_lines())
        cfg = tmp_path / "mini.yaml"
        cfg.write_text(yaml.safe_dump(mini_config().model_dump(mode="json")))
        (tmp_path / ".features.lease").write_text(lease.read_text())
        args = ["featurize", "--config", str(cfg), "--input", str(src), "--overwrite"]
        refused = CliRunner().invoke(main, [*args, "--output", str(tmp_path / "features")])
        assert refused.exit_code == 2 and "being written by another job" in refused.output
        (tmp_path / ".features.lease").unlink()
        assert version_of(out) == 1
    finally:
        release.touch()
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    assert version_of(out) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "mini.yaml", "out", "release"]


def _leased(lease: Path) -> bool:
    """The lease exists and is written (it is created, then filled, then rewritten by beats)."""
    try:
        return "job_id" in json.loads(lease.read_text())
    except (OSError, ValueError):
        return False


def _write_lease(path: Path, **fields) -> None:
    lease = {"job_id": "other", "host": "elsewhere", "pid": 1, "started_at": "then"}
    path.write_text(json.dumps({**lease, **fields}))


def test_a_lease_is_taken_over_only_when_stale(spark, tmp_path):
    out = tmp_path / "out"
    lease = tmp_path / ".out.lease"
    _write_lease(lease, heartbeat=time.time())  # a live job on another host
    with pytest.raises(OutputBusyError, match="job other on elsewhere"):
        publish_version(spark, str(out), 1)
    assert not out.exists() and lease.exists()

    _write_lease(lease, heartbeat=time.time() - 3600)  # its heartbeat stopped an hour ago
    publish_version(spark, str(out), 1)
    assert version_of(out) == 1 and not lease.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    _write_lease(lease, host=socket.gethostname(), pid=int(dead.stdout), heartbeat=time.time())
    publish_version(spark, str(out), 2, overwrite=True)  # a dead pid on this host: stale at once
    assert version_of(out) == 2 and not lease.exists()


def test_overwrite_never_replaces_what_is_not_a_dataset(spark, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "precious.txt").write_text("years of work")
    sparks_own = tmp_path / "sparks_own"  # a Spark output, but not one of ours
    sparks_own.mkdir()
    (sparks_own / "_SUCCESS").write_text("")
    (sparks_own / "part-0.parquet").write_text("data")
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for target in (precious, sparks_own, a_file):
        before = sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
        with pytest.raises(OutputRefusedError, match="not a dataset written by fm-spark") as err:
            publish_version(spark, str(target), 1, overwrite=True)
        _tells_nobody_to_delete(str(err.value))
        after = sorted((p.name, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file())
        assert after == before  # not even a lease or staging folder was left

    # Through the feature job's CLI, with --overwrite, and for "/" and "": exit 2, one clear
    # line, no Java traceback.
    src = write_lines(tmp_path / "in" / "in.csv", mini_lines())
    cfg = tmp_path / "in" / "mini.yaml"
    cfg.write_text(yaml.safe_dump(mini_config().model_dump(mode="json")))
    base = ["featurize", "--config", str(cfg), "--input", str(src), "--overwrite"]
    for target, says in ((precious, "precious.txt"), ("/", "root of a file system"),
                         ("", "--output is empty")):  # fmt: skip
        result = CliRunner().invoke(main, [*base, "--output", str(target)])
        assert result.exit_code == 2, result.output
        assert says in result.output and "featurize failed" in result.output
        assert "Traceback" not in result.output and "java." not in result.output
        _tells_nobody_to_delete(result.output)
    assert (precious / "precious.txt").read_text() == "years of work"


def test_output_dot_in_a_folder_holding_a_document_is_refused(tmp_path):
    """``--output .`` resolves in the JVM's working directory: run the CLI in its own process."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "document.txt").write_text("a document")
    src = write_lines(tmp_path / "in.csv", mini_lines())
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(mini_config().model_dump(mode="json")))
    cmd = [sys.executable, "-m", "fm_spark", "featurize", "--config", str(cfg)]
    cmd += ["--input", str(src), "--output", ".", "--overwrite"]
    env = {**os.environ, "FM_SPARK_LOG_LEVEL": "ERROR", "SPARK_MASTER": "local[1]"}
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "document.txt" in done.stderr and "not a dataset written by fm-spark" in done.stderr
    assert "Traceback" not in done.stderr
    _tells_nobody_to_delete(done.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "mini.yaml", "work"]
    assert [p.name for p in work.iterdir()] == ["document.txt"]


def test_feature_job_killed_mid_publish_keeps_the_previous_dataset(spark, tmp_path):
    src = write_lines(tmp_path / "in.csv", mini_lines())
    data = mini_config().model_dump(mode="json")
    data["fields"] = [f for f in data["fields"] if f["name"] in ("cat", "cnt")]  # small and quick
    config = parse_config(data, "mini")
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "out"
    featurize(config, str(src), str(out), spark=spark)
    first_map = (out / "feature_map.json").read_bytes()

    cmd = [sys.executable, "-m", "fm_spark", "featurize", "--config", str(cfg), "--input"]
    cmd += [str(src), "--output", str(out), "--overwrite", "--set", "fields.cat.min_count=1"]
    env = {**os.environ, "FM_SPARK_LOG_LEVEL": "ERROR", "SPARK_MASTER": "local[1]"}
    env[FAULT_ENV] = "kill@moved"  # the new dataset is in place but not marked finished
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    assert not (out / "_SUCCESS").exists()

    with pytest.raises(FeaturizeError, match="finished dataset; pass --overwrite"):
        featurize(config, str(src), str(out), spark=spark)
    assert (out / "_SUCCESS").exists() and (out / "feature_map.json").read_bytes() == first_map
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "mini.yaml", "out"]


def test_failed_output_never_replaces_someone_elses_folder(spark, tmp_path):
    out = tmp_path / "out"
    theirs = tmp_path / "out.failed"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    pub = Publisher(spark, str(out), marker_files=(MARKER,))
    pub.begin()
    pub.write_text("summary.json", "{}")
    failed = pub.fail_to(".failed")
    pub.abort()
    assert failed.endswith(f"out.failed-{pub.job_id}")
    assert (theirs / "notes.txt").read_text() == "mine"
    made = tmp_path / f"out.failed-{pub.job_id}"
    assert (made / "summary.json").exists() and not (made / "_SUCCESS").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.failed", made.name]
