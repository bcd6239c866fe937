"""Writing bench sections into ``BENCHMARKS.md`` without losing what is already there.

Re-measuring one section (``--sections features``) used to rewrite the whole file: every
other section and every note added by hand was gone. Each section's generated text now sits
between two markers, and a run replaces only the blocks it measured. Text outside the
markers (notes, caveats, hand-merged results) is kept. A section seen for the first time is
appended. Each block carries its own provenance line (date, command, machine, load), because
sections of one file come from different runs.

A file that exists but is not a benchmarks file of this project is refused, never
overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from fm_spark.atomic import write_text_atomic

__all__ = ["TITLE", "ReportError", "begin_marker", "end_marker", "merge", "write_report"]

TITLE = "# fm-spark benchmarks"
_INTRO = (
    "Written by `python -m fm_spark.bench` (`make bench`). Each section says when, how and "
    "where it was measured; text outside the `<!-- bench:... -->` markers is kept when a "
    "section is re-measured."
)


class ReportError(ValueError):
    """The output file cannot be merged into safely."""


def begin_marker(name: str) -> str:
    return f"<!-- bench:{name}:begin -->"


def end_marker(name: str) -> str:
    return f"<!-- bench:{name}:end -->"


def _span(text: str, name: str, path: str) -> tuple[int, int] | None:
    """(start, end) of ``name``'s block including its markers, or None if it has none."""
    begins = [m.start() for m in re.finditer(re.escape(begin_marker(name)), text)]
    ends = [m.end() for m in re.finditer(re.escape(end_marker(name)), text)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ReportError(
            f"{path}: the markers of section {name!r} are not one begin followed by one end; "
            "fix them by hand (nothing was written)"
        )
    return begins[0], ends[0]


def merge(existing: str | None, blocks: Mapping[str, str], path: str = "BENCHMARKS.md") -> str:
    """``existing`` (None: a new file) with each of ``blocks`` (section name -> Markdown)
    put in place of its previous block, or appended."""
    if existing is None:
        text = f"{TITLE}\n\n{_INTRO}\n"
    elif existing.startswith(TITLE):
        text = existing
    else:
        raise ReportError(
            f"{path} exists and is not an fm-spark benchmarks file (it does not start with "
            f"{TITLE!r}); pass --out with another path"
        )
    for name, body in blocks.items():
        block = f"{begin_marker(name)}\n{body.strip()}\n{end_marker(name)}"
        span = _span(text, name, path)
        if span is None:
            text = f"{text.rstrip()}\n\n{block}\n"
        else:
            text = text[: span[0]] + block + text[span[1] :]
    return text


def write_report(path: Path, blocks: Mapping[str, str]) -> None:
    """Merge ``blocks`` into ``path``, replacing it whole (a killed run leaves the old file)."""
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    write_text_atomic(path, merge(existing, blocks, str(path)))
