"""A minimal publishing job for the publish tests, importable and runnable as a script.

``python tests/publish_cases.py OUTPUT VERSION [--overwrite]`` publishes a dataset whose
``meta.json`` says ``VERSION`` and whose ``data/`` holds ``10 * VERSION`` rows, in its own
process (so ``FM_SPARK_PUBLISH_FAULT`` can kill it for real), and prints its job id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MARKER = "meta.json"
SCRIPT = Path(__file__).resolve()


def publish_version(spark, output: str, version: int, overwrite: bool = False) -> str:
    from fm_spark.features.publish import publishing

    with publishing(spark, output, overwrite=overwrite, marker_files=(MARKER,)) as pub:
        spark.range(10 * version).coalesce(2).write.parquet(pub.join("data"))
        pub.write_text(MARKER, json.dumps({"version": version}))
    return pub.job_id


def version_of(folder: Path, spark=None) -> int:
    """The version a finished folder holds, after checking it is complete."""
    assert (folder / "_SUCCESS").exists(), f"{folder} is not marked finished"
    version = json.loads((folder / MARKER).read_text())["version"]
    import pyarrow.parquet as pq

    assert pq.read_table(folder / "data").num_rows == 10 * version, f"{folder} is incomplete"
    return version


def run_job(output: Path, version: int, overwrite: bool = False, **env: str):
    """Start the job in a new process (not waiting for it)."""
    cmd = [sys.executable, str(SCRIPT), str(output), str(version)]
    cmd += ["--overwrite"] if overwrite else []
    full_env = {**os.environ, "FM_SPARK_LOG_LEVEL": "ERROR", **env}
    return subprocess.Popen(
        cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def main(argv: list[str]) -> int:
    from fm_spark.features.publish import PublishError
    from fm_spark.spark import get_spark

    output, version = argv[0], int(argv[1])
    spark = get_spark("publish-case", conf={"spark.master": "local[1]"})
    try:
        job_id = publish_version(spark, output, version, overwrite="--overwrite" in argv)
    except PublishError as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"job_id": job_id}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
