"""Feature-job benchmark: is ``featurize`` as fast as Spark itself, and is its memory bounded?

Three jobs over the same generated Criteo-format log (0.8 % malformed lines), one after the
other in one Spark session, so load from other processes hits them alike:

* **this job**: :func:`fm_spark.features.job.featurize` with ``conf/criteo.yaml`` (parse and
  validate 40 columns, quarantine, hash split, 13 log-bin + 26 vocabulary encodings fitted on
  train, one Parquet write of the three splits);
* **MLlib**: ``StringIndexer`` + ``OneHotEncoder`` over the 26 categorical fields (fit +
  transform + Parquet write), what a Spark user would reach for first;
* **untouched rewrite**: Spark reading the file as CSV and writing it as Parquet, as is: the
  floor of any Spark job that reads this file and writes Parquet.

Goals, as ratios measured in the same run: the job at least 3x MLlib's rows/s and at least 0.5
of the untouched rewrite's. A small warm-up round of all three runs first (JIT, class loading).

Memory: peak RSS (VmHWM) of a real ``fm-spark featurize`` process tree at two input sizes:
the Python driver and the Spark JVM, each its own mark (driver and executor are one JVM under
``local[*]``; see :func:`_role` for what is left out).
Bounded means the second size does not need proportionally more.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["run"]

CONFIG = Path(__file__).resolve().parents[2] / "conf" / "criteo.yaml"
BAD_FRACTION = 0.008
SEED = 11
COLUMNS = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
CATEGORICAL = [c for c in COLUMNS if c.startswith("C")]
GOAL_VS_MLLIB = 3.0
GOAL_VS_REWRITE = 0.5


def _sizes(quick: bool) -> tuple[int, int, tuple[int, ...]]:
    """(warm-up rows, compared rows, the RSS sizes); ``FM_BENCH_FEATURES_ROWS`` and
    ``FM_BENCH_FEATURES_RSS_ROWS`` (comma-separated) override the last two, e.g. on a machine
    too busy for minutes-long runs."""
    warm, rows, rss = (
        (5_000, 50_000, (50_000, 200_000)) if quick else (20_000, 1_000_000, (1_000_000, 4_000_000))
    )
    rows = int(os.environ.get("FM_BENCH_FEATURES_ROWS", rows))
    if os.environ.get("FM_BENCH_FEATURES_RSS_ROWS"):
        rss = tuple(int(x) for x in os.environ["FM_BENCH_FEATURES_RSS_ROWS"].split(","))
    return warm, rows, rss


def _generate(root: Path, rows: int) -> tuple[Path, int]:
    from fm_spark.datagen import generate

    path = root / f"criteo-{rows}.tsv"
    meta = generate(format="criteo", rows=rows, seed=SEED, output=path, bad_fraction=BAD_FRACTION)
    return path, int(meta["total_lines"])


def _csv(spark, path: Path):
    from pyspark.sql import types as T

    schema = T.StructType([T.StructField(c, T.StringType()) for c in COLUMNS])
    return spark.read.csv(str(path), sep="\t", schema=schema, mode="PERMISSIVE")


def _rewrite(spark, path: Path, out: Path) -> None:
    _csv(spark, path).write.parquet(str(out))


def _mllib(spark, path: Path, out: Path) -> None:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer

    df = _csv(spark, path)
    idx = [f"{c}_idx" for c in CATEGORICAL]
    vec = [f"{c}_vec" for c in CATEGORICAL]
    pipeline = Pipeline(
        stages=[
            StringIndexer(inputCols=CATEGORICAL, outputCols=idx, handleInvalid="keep"),
            OneHotEncoder(inputCols=idx, outputCols=vec, handleInvalid="keep"),
        ]
    )
    model = pipeline.fit(df)
    model.transform(df).select("label", *vec).write.parquet(str(out))


def _job(spark, path: Path, out: Path) -> dict[str, Any]:
    from fm_spark.config import load_config
    from fm_spark.features.job import featurize

    return featurize(load_config(CONFIG), str(path), str(out), spark=spark)


def _timed(fn, *args) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def _compare(root: Path, quick: bool) -> dict[str, Any]:
    """Warm-up round, then the three jobs once each on the compared file."""
    from fm_spark.spark import get_spark

    warm_rows, rows, _ = _sizes(quick)
    spark = get_spark("fm-spark-bench-features")
    jobs = {"rewrite": _rewrite, "mllib": _mllib, "job": _job}
    warm, _ = _generate(root, warm_rows)
    for name, fn in jobs.items():
        fn(spark, warm, root / f"warm-{name}")
    path, lines = _generate(root, rows)
    out: dict[str, Any] = {"rows": rows, "lines": lines, "seconds": {}}
    for name, fn in jobs.items():
        seconds, result = _timed(fn, spark, path, root / f"out-{name}")
        out["seconds"][name] = seconds
        print(f"[bench] features: {name} {lines / seconds:,.0f} rows/s", file=sys.stderr)
        if name == "job":
            out["stages"] = result["stage_seconds"]
            out["quarantined"] = result["rows_quarantined"]
        shutil.rmtree(root / f"out-{name}", ignore_errors=True)
    out["parallelism"] = spark.sparkContext.defaultParallelism
    out["master"] = spark.sparkContext.master
    out["shuffle_partitions"] = spark.conf.get("spark.sql.shuffle.partitions")
    for p in path.parent.glob(f"{path.name}*"):
        p.unlink()
    return out


# --------------------------------------------------------------------------------------------
# memory of a real `fm-spark featurize` process tree


def _vmhwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# The Spark JVM under spark-submit: ``java ... org.apache.spark.deploy.SparkSubmit`` (the
# launcher's short-lived ``java ... launcher.Main`` only prints the command line).
_SPARK_SUBMIT = "org.apache.spark.deploy.SparkSubmit"
_LAUNCHER = "org.apache.spark.launcher.Main"


def _role(proc: Any, root: int) -> str:
    """``driver`` (the Python process started), ``jvm`` (the Spark JVM), or ``other``.

    ``other`` holds the launcher, the ``spark-class`` shells and the JVM's short-lived forks
    (Hadoop's local file system runs shell commands: a fork of the JVM, named after the
    forking thread, whose VmHWM reads the parent's copy-on-write pages). Classifying by
    "not named java" counted those forks as the Python driver: the column showed the JVM's
    mark. The shell that ``exec`` s into the JVM keeps its pid, so the role is re-read each
    poll.
    """
    if proc.pid == root:
        return "driver"
    cmd = proc.cmdline()
    if proc.name() == "java" and _SPARK_SUBMIT in cmd and _LAUNCHER not in cmd:
        return "jvm"
    return "other"


class _TreePeak:
    """Polls a process tree's per-process VmHWM (a high-water mark, so polling cannot miss
    the peak of a process that is still alive at a poll) until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, str, int]] = {}  # pid -> (role, name, KiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> _TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    role, name = _role(p, self.pid), p.name()
                except psutil.Error:
                    continue
                kib = _vmhwm_kib(p.pid)
                # The latest role and name win (the shell exec'd into the JVM keeps its
                # pid), the largest mark too.
                self.peaks[p.pid] = (role, name, max(kib, self.peaks.get(p.pid, ("", "", 0))[2]))
            self._stop.wait(self.interval)

    def mib(self, role: str) -> float:
        kib = [k for r, _, k in self.peaks.values() if r == role]
        return max(kib, default=0) / 1024

    def describe(self) -> str:
        """Every process seen, for a check by eye (``FM_BENCH_FEATURES_TREE=1``)."""
        return "\n".join(
            f"  pid {pid} {role:6} {name:14} {kib / 1024:8,.0f} MiB"
            for pid, (role, name, kib) in sorted(self.peaks.items())
        )


def _memory(root: Path, quick: bool) -> list[dict[str, Any]]:
    fm_spark = Path(sys.executable).with_name("fm-spark")
    out = []
    for rows in _sizes(quick)[2]:
        path, lines = _generate(root, rows)
        args = [str(fm_spark), "featurize", "--config", str(CONFIG), "--input", str(path),
                "--output", str(root / f"rss-{rows}")]  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with _TreePeak(proc.pid) as peak:
            _, err = proc.communicate()
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{err.decode()[-3000:]}")
        print(
            f"[bench] features: featurize {lines:,} lines: Python driver "
            f"{peak.mib('driver'):,.0f} MiB, JVM {peak.mib('jvm'):,.0f} MiB peak RSS",
            file=sys.stderr,
        )
        if os.environ.get("FM_BENCH_FEATURES_TREE"):
            print(peak.describe(), file=sys.stderr)
        out.append(
            {
                "rows": rows,
                "lines": lines,
                "input_mib": path.stat().st_size / 2**20,
                "python": peak.mib("driver"),
                "jvm": peak.mib("jvm"),
                "seconds": seconds,
            }
        )
        for p in path.parent.glob(f"{path.name}*"):
            p.unlink()
        shutil.rmtree(root / f"rss-{rows}", ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(device: str = "cpu", quick: bool = False) -> str:
    """Measure, and return a Markdown section for BENCHMARKS.md (``device`` is unused: the
    feature job runs on CPUs)."""
    started = time.perf_counter()
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="fm-bench-features-") as tmp:
        root = Path(tmp)
        compared = _compare(root, quick)
        memory = _memory(root, quick)
    return _markdown(compared, memory, quick, load_before, _load(), time.perf_counter() - started)


def _markdown(
    c: dict[str, Any],
    memory: list[dict[str, Any]],
    quick: bool,
    load_before: str,
    load_after: str,
    seconds: float,
) -> str:
    lines, secs = c["lines"], c["seconds"]
    rate = {k: lines / v for k, v in secs.items()}
    vs_mllib, vs_rewrite = rate["job"] / rate["mllib"], rate["job"] / rate["rewrite"]

    def verdict(ratio: float, goal: float) -> str:
        return f"**{ratio:.2f}x** (goal >= {goal:g}: {'met' if ratio >= goal else 'not met'})"

    stages = ", ".join(f"{k} {v:.1f} s" for k, v in c["stages"].items())
    out = [
        "## Feature job: `featurize` vs MLlib and vs Spark's untouched rewrite",
        "",
        f"One Spark session (`{c['master']}`, default parallelism {c['parallelism']}, "
        f"`spark.sql.shuffle.partitions` {c['shuffle_partitions']}), one generated "
        f"Criteo-format file of {lines:,} lines ({c['rows']:,} rows + "
        f"{lines - c['rows']:,} malformed, "
        f"{c['quarantined']:,} quarantined by the job), after a warm-up round of all three on "
        f"a small file. Rows/s = lines in the file / wall seconds of the whole job."
        + (" Quick mode (small sizes)." if quick else ""),
        "",
        "| job | seconds | rows/s |",
        "|---|---:|---:|",
        f"| `featurize` (conf/criteo.yaml: 13 log-bin + 26 vocab fields, quarantine, "
        f"hash split, 3 splits) | {secs['job']:.1f} | {rate['job']:,.0f} |",
        f"| MLlib `StringIndexer` + `OneHotEncoder`, 26 categorical fields (fit + transform "
        f"+ Parquet) | {secs['mllib']:.1f} | {rate['mllib']:,.0f} |",
        f"| Spark CSV -> Parquet, untouched | {secs['rewrite']:.1f} | {rate['rewrite']:,.0f} |",
        "",
        f"- `featurize` / MLlib: {verdict(vs_mllib, GOAL_VS_MLLIB)}",
        f"- `featurize` / untouched rewrite: {verdict(vs_rewrite, GOAL_VS_REWRITE)}",
        f"- `featurize` stages: {stages}",
        "",
        "Peak RSS (VmHWM, MiB) in a `fm-spark featurize` process tree (a fresh process "
        "per size): the Python driver (the process started), and the Spark JVM (driver and "
        "executor in one under `local[*]`; its heap is capped by `spark.driver.memory`); the "
        "launcher, shells and the JVM's short-lived forks for shell commands are left out:",
        "",
        "| input lines | input MiB | Python driver MiB | JVM MiB | run s | rows/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for m in memory:
        out.append(
            f"| {m['lines']:,} | {m['input_mib']:,.0f} | {m['python']:,.0f} | {m['jvm']:,.0f} "
            f"| {m['seconds']:.1f} | {m['lines'] / m['seconds']:,.0f} |"
        )
    out += [
        "",
        f"_Load average (1, 5, 15 min) before: {load_before}; after: {load_after}. "
        f"Section measured in {seconds:.0f} s._",
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(run(quick="--quick" in sys.argv))
