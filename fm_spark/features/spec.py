"""What training and serving must agree on, with no Spark in sight.

Reason codes and their check order, the whole-value patterns both executors match, the local
id layout every encoding follows and the log-bin rule: the feature job (Spark), the serving
encoder (numpy/pandas) and the log generator all import them from here, so a scoring service
can load this module (and everything the serving encoder needs) without a JVM.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "BAD_FLOAT",
    "BAD_INT",
    "BAD_LABEL",
    "BAD_SPLIT_KEY",
    "BIN_FIRST_ID",
    "FLOAT_PATTERN",
    "HASH_FIRST_ID",
    "HASH_SEED",
    "HEADER",
    "INT_PATTERN",
    "LOG_BIN_LINEAR_MAX",
    "MALFORMED_CSV",
    "MALFORMED_JSON",
    "MISSING_ID",
    "RARE_ID",
    "REASONS",
    "REPLACEMENT_CHAR",
    "SUCCESS_FILE",
    "UNDECODABLE",
    "UNSEEN_ID",
    "VALUE_PRESENT_ID",
    "VOCAB_FIRST_ID",
    "WRONG_COLUMN_COUNT",
    "YYMMDDHH_PATTERN",
    "csv_patterns",
    "log_bin",
    "regex_quote",
]

# -- quarantine reasons ------------------------------------------------------------------------
UNDECODABLE = "undecodable"  # the line is not valid UTF-8
MALFORMED_JSON = "malformed_json"  # jsonl: not a JSON object
MALFORMED_CSV = "malformed_csv"  # csv: quoting that is not RFC 4180 (e.g. an unclosed quote)
WRONG_COLUMN_COUNT = "wrong_column_count"  # tsv/csv: not exactly len(input.columns) values
BAD_LABEL = "bad_label"  # label not in label.positive ∪ label.negative
BAD_INT = "bad_int"  # numeric dtype=int field: present but not [+-]digits within int64
BAD_FLOAT = "bad_float"  # numeric dtype=float field: present but not a finite decimal
BAD_SPLIT_KEY = "bad_split_key"  # time split: split column missing or unparseable

# Check order: the first failing rule names the row's reason.
REASONS = (
    UNDECODABLE,
    MALFORMED_JSON,
    MALFORMED_CSV,
    WRONG_COLUMN_COUNT,
    BAD_LABEL,
    BAD_INT,
    BAD_FLOAT,
    BAD_SPLIT_KEY,
)

# Not a quarantine reason: what the serving encoder reports for a skipped header line.
HEADER = "header"

# Spark's text reader decodes UTF-8 with replacement: U+FFFD marks bytes that did not decode.
REPLACEMENT_CHAR = "\ufffd"

# -- whole-value patterns (no anchors: Spark wraps them in ^(?:...)\z, Python uses fullmatch) --
# Deliberately stricter than Spark's lenient casts (which trim, accept "1.5d", "0x1p3",
# "Infinity"), so both backends accept exactly the same strings.
INT_PATTERN = r"[+-]?[0-9]+"
FLOAT_PATTERN = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
YYMMDDHH_PATTERN = r"[0-9]{8}"

# A finished dataset (Hadoop's marker); the serving encoder refuses a folder without it.
SUCCESS_FILE = "_SUCCESS"


def regex_quote(text: str) -> str:
    """A regex matching ``text`` literally, read the same by Java and Python: ASCII
    punctuation and whitespace escaped with a backslash."""
    return "".join(f"\\{c}" if c.isascii() and not c.isalnum() else c for c in text)


def csv_patterns(separator: str) -> tuple[str, str]:
    """RFC 4180 regexes for one separator: (a well-formed line, a quoted section).

    A field is either quoted (``"..."``, a quote inside doubled) or unquoted without any
    quote or separator. A line that is not fields joined by the separator is
    ``malformed_csv`` in both executors (e.g. ``a,"b`` or ``a, "b"``), so Spark's CSV parser
    and Python's only ever see lines on which they agree. The unrolled ``[^"]*(?:""[^"]*)*``
    keeps Java's regex engine from recursing per character on long fields.
    """
    sep = regex_quote(separator)
    quoted = r'"[^"]*(?:""[^"]*)*"'
    first = regex_quote(separator[0])
    field = f'(?:{quoted}|[^"{first}]*)' if len(separator) == 1 else f'(?:{quoted}|[^"]*?)'
    return f"{field}(?:{sep}{field})*", quoted


# -- local id layout shared by every encoding (see README, "Id layout") -----------------------
MISSING_ID = 0  # value absent / empty (also the padding slot of a multi-valued field)
UNSEEN_ID = 1  # vocabulary encodings: a value never seen in the training split
RARE_ID = 2  # vocabulary encodings: a value seen fewer than min_count times
VOCAB_FIRST_ID = 3  # vocabulary encodings: first id of a kept value
HASH_FIRST_ID = 1  # hashed encodings: bucket b has local id 1 + b
BIN_FIRST_ID = 1  # quantile bins: bin b has local id 1 + b
VALUE_PRESENT_ID = 1  # numeric kept as a value: id 1 carries the value, id 0 means missing
HASH_SEED = 42  # Spark's xxhash64 seed; Python: xxhash.xxh64_intdigest(b, seed=42) as int64

# -- the log-bin rule --------------------------------------------------------------------------
LOG_BIN_LINEAR_MAX = 2  # x <= 2 keeps floor(x); above, floor(ln(x) * ln(x))


def log_bin(x: np.ndarray, small: np.ndarray | None = None) -> np.ndarray:
    """Criteo winners' count binning: ``floor(ln(x) * ln(x))`` for x > 2, else ``floor(x)``.

    ``ln(x) * ln(x)`` rather than ``pow``: a product is exactly rounded on every platform, so
    numpy reproduces Spark's ``log(x) * log(x)`` (``StrictMath.log``) bit for bit. ``x`` is
    any numeric array; ``small`` gives the int64 result where x <= 2 (default: ``x`` as int64,
    exact for integer input). Returns int64.
    """
    x = np.asarray(x)
    xf = x.astype(np.float64)
    big = xf > LOG_BIN_LINEAR_MAX
    ln = np.log(np.where(big, xf, 1.0))
    below = np.asarray(x, dtype=np.int64) if small is None else small
    return np.where(big, np.floor(ln * ln).astype(np.int64), below)
