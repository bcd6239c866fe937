"""Guard rails on the data: stop a job whose output would train nothing useful, and say why.

A dataset with an empty split, or a split holding one class only, "succeeds" downstream with a
test AUC of NaN; a job that quarantines most of its input is usually misconfigured, not fed bad
data. These checks run on the counts the job already has (and, only when it fails, on a few
sample lines), and their messages say which config key to fix, not only which limit to loosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fm_spark.config import DatasetConfig
from fm_spark.features.spec import (
    BAD_FLOAT,
    BAD_INT,
    BAD_LABEL,
    BAD_SPLIT_KEY,
    MALFORMED_CSV,
    MALFORMED_JSON,
    UNDECODABLE,
    WRONG_COLUMN_COUNT,
)

__all__ = [
    "DataGuardError",
    "check_splits",
    "sample_bad_lines",
    "too_many_bad_rows",
    "top_reasons",
]

SPLITS = ("train", "valid", "test")
TOP_REASONS = 3
SAMPLES_PER_REASON = 3
_SAMPLE_CHARS = 160


class DataGuardError(ValueError):
    """The data (with this config) cannot make a useful dataset; nothing was published."""


def check_splits(cfg: DatasetConfig, splits: Mapping[str, Mapping[str, Any]]) -> None:
    """Every split has rows (unless its fraction is configured 0) and both classes."""
    shown = ", ".join(f"{s} {splits[s]['rows']} rows / {splits[s]['positives']} positives"
                      for s in SPLITS)  # fmt: skip
    by_fraction = cfg.split.method == "hash" or cfg.split.cutoffs is None
    for name in SPLITS:
        rows, positives = int(splits[name]["rows"]), int(splits[name]["positives"])
        if rows == 0:
            if by_fraction and cfg.split.fractions[name] == 0:
                continue
            raise DataGuardError(f"the {name} split is empty ({shown}): {_split_hint(cfg, name)}")
        if positives in (0, rows):
            only = "positive" if positives else "negative"
            raise DataGuardError(
                f"the {name} split holds only {only} rows ({shown}): no model can be trained or "
                f"evaluated on one class. Check label.positive {cfg.label.positive} and "
                f"label.negative {cfg.label.negative} against the raw values of column "
                f"{cfg.label.column!r}, and the split ({_split_hint(cfg, name)})"
            )


def _split_hint(cfg: DatasetConfig, name: str) -> str:
    spec = cfg.split
    if spec.method == "time" and spec.cutoffs is not None:
        return (
            f"split.cutoffs {spec.cutoffs} are compared as strings with the raw values of "
            f"split.column {spec.column!r}; set them inside the data's time range"
        )
    if spec.method == "time":
        return f"split.fractions {spec.fractions} over split.column {spec.column!r}"
    return f"split.fractions {spec.fractions} (hash split): is the input too small?"


def sample_bad_lines(rows: Any, reasons: list[str], n: int = SAMPLES_PER_REASON) -> dict:
    """Up to ``n`` (raw line, detail) pairs for each of ``reasons``: one small Spark job per
    reason that stops as soon as it has them (``rows`` is the job's cached, validated rows)."""
    from pyspark.sql import functions as F

    from fm_spark.features.quarantine import DETAIL, RAW, REASON

    return {
        reason: [
            (r[RAW], r[DETAIL])
            for r in rows.where(F.col(REASON) == reason).select(RAW, DETAIL).limit(n).collect()
        ]
        for reason in reasons
    }


def top_reasons(summary: Mapping[str, Any]) -> list[str]:
    """The quarantine reasons with the most rows, most first."""
    counts = {k: v for k, v in summary["quarantined_by_reason"].items() if v}
    return sorted(counts, key=lambda k: (-counts[k], k))[:TOP_REASONS]


def too_many_bad_rows(
    cfg: DatasetConfig,
    summary: Mapping[str, Any],
    samples: Mapping[str, list[tuple[str, str]]],
    output: str,
    failed: str,
) -> str:
    """The bad-fraction failure: top reasons, sample lines, and the config to check for each."""
    counts = {k: v for k, v in summary["quarantined_by_reason"].items() if v}
    top = top_reasons(summary)
    lines = [
        f"{summary['rows_quarantined']} of {summary['rows_read']} rows were quarantined (bad "
        f"fraction {summary['bad_fraction']:.6g} > max_bad_fraction {cfg.max_bad_fraction:g}). "
        f"Nothing was published to {output}; the quarantined lines and the summary are in "
        f"{failed}/ .",
        "Top reasons:",
    ]
    for reason in top:
        lines.append(f"  {reason}: {counts[reason]} rows. {_reason_hint(cfg, reason)}")
        for raw, detail in samples.get(reason, []):
            text = raw if raw is None or len(raw) <= _SAMPLE_CHARS else raw[:_SAMPLE_CHARS] + "..."
            lines.append(f"      {text!r}" + (f"  ({detail})" if detail else ""))
    lines.append(
        "If these lines are read wrongly, fix the config above; if they really are broken, "
        "accept more with --set max_bad_fraction=<fraction>."
    )
    return "\n".join(lines)


def _reason_hint(cfg: DatasetConfig, reason: str) -> str:
    inp, label = cfg.input, cfg.label
    hints = {
        BAD_LABEL: (
            f"Column {label.column!r} holds values outside label.positive {label.positive} and "
            f"label.negative {label.negative}: list the raw strings that mean click / no click "
            f'(e.g. --set \'label.positive=["1", " 1"]\'), or check that input.columns puts '
            f"{label.column!r} at the right position."
        ),
        WRONG_COLUMN_COUNT: (
            f"Lines do not split into the {len(inp.columns)} input.columns with "
            f"input.format {inp.format!r} and separator {inp.sep!r}: check both."
        ),
        BAD_INT: (
            "A numeric field with dtype int holds non-integers (the field is in parentheses): "
            "set its dtype to float, or check input.columns order."
        ),
        BAD_FLOAT: (
            "A numeric field holds non-numbers (the field is in parentheses): make it "
            "categorical, or check input.columns order."
        ),
        BAD_SPLIT_KEY: (
            f"split.column {cfg.split.column!r} is missing or not parseable on these lines."
        ),
        MALFORMED_JSON: "Lines are not JSON objects: is input.format jsonl right?",
        MALFORMED_CSV: "Lines break RFC 4180 quoting: is input.format csv (not tsv) right?",
        UNDECODABLE: "Lines are not UTF-8: re-encode the input.",
    }
    return hints.get(reason, "")
