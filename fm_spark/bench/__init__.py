"""``python -m fm_spark.bench``: run benchmark sections and write them to one Markdown file.

A section is a module with ``run(device: str = "cpu", quick: bool = False) -> str`` returning
Markdown. To add one, add its name and import path to :data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import shlex
import sys
from pathlib import Path

SECTIONS: dict[str, str] = {
    "models": "fm_spark.bench.models",
    "training": "fm_spark.bench.training",
    "quality": "fm_spark.bench.quality",
    "serving": "fm_spark.bench.serving",
    "features": "fm_spark.bench.features",
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_header(device: str, command: str) -> str:
    """Who measured what, where: numbers without this are not comparable across runs."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        accel = torch.cuda.get_device_name(torch.device(device))
    else:
        accel = "none"
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# fm-spark benchmarks",
            "",
            f"- date: {now}",
            f"- machine: {_cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}",
            f"- torch {torch.__version__}, {torch.get_num_threads()} intra-op threads (default), "
            f"device `{device}` (accelerator: {accel})",
            f"- load average at start (1, 5, 15 min): {load}",
            f"- command: `{command}`",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fm_spark.bench", description=__doc__)
    parser.add_argument("--out", default="BENCHMARKS.md", help="Markdown file to write")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, from: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="fewer steps: a smoke run")
    args = parser.parse_args(argv)

    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    raw = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "fm_spark.bench", *raw])
    parts = [machine_header(args.device, command)]
    for name in names:
        print(f"[bench] running section {name!r} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(SECTIONS[name])
        parts.append(module.run(device=args.device, quick=args.quick).rstrip() + "\n")
    out = Path(args.out)
    out.write_text("\n".join(parts), encoding="utf-8")
    print(f"[bench] wrote {out}", file=sys.stderr)
    return 0
