"""``python -m fm_spark.bench``: run benchmark sections and merge them into one Markdown file.

A section is a module with ``run(device: str = "cpu", quick: bool = False) -> str`` returning
Markdown, starting with its heading. To add one, add its name and import path to
:data:`SECTIONS`. Only the sections run are replaced in the file (:mod:`.report`).
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

from fm_spark.bench.report import ReportError, merge, write_report

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


def provenance(device: str, command: str) -> str:
    """Who measured what, where: numbers without this are not comparable across runs. One
    line per section, since a file's sections come from different runs."""
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
    return (
        f"_Measured {now} with `{command}`: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
        f"device `{device}` (accelerator: {accel}); load average at start (1, 5, 15 min): "
        f"{load}._"
    )


def with_provenance(body: str, line: str) -> str:
    """The section's Markdown with ``line`` under its own heading (first line), if it has
    one, else above it."""
    heading, _, rest = body.strip().partition("\n")
    if heading.startswith("#"):
        return f"{heading}\n\n{line}\n{rest}"
    return f"{line}\n\n{body.strip()}"


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
    out = Path(args.out)
    try:  # refuse a foreign or broken file before minutes of measuring, not after
        existing = out.read_text(encoding="utf-8") if out.exists() else None
        merge(existing, dict.fromkeys(names, ""), str(out))
    except ReportError as exc:
        parser.error(str(exc))
    for name in names:
        print(f"[bench] running section {name!r} ...", file=sys.stderr, flush=True)
        module = importlib.import_module(SECTIONS[name])
        header = provenance(args.device, command)
        body = module.run(device=args.device, quick=args.quick)
        # Written after each section: a run that dies later keeps what it measured.
        write_report(out, {name: with_provenance(body, header)})
        print(f"[bench] wrote section {name!r} to {out}", file=sys.stderr)
    return 0
