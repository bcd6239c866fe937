"""The serving encoder: raw rows -> the ids the feature job writes, in pure Python/pandas.

``FeatureEncoder.load(feature_map_dir)`` reads ``feature_map.json`` and the vocabularies beside
it; ``encode_lines`` takes raw log lines (str or bytes), ``encode_records`` a pandas frame of
raw source columns. Both apply the quarantine rules of :mod:`.quarantine` in the same order
and give exactly the ids Spark gives (the parity tests hold them to that): work is vectorised
per field (pandas string methods, ``Index.get_indexer`` for vocabularies, numpy for bins);
only what is per row by nature (decoding, splitting, JSON parsing, hashing a distinct token)
loops over rows.

No Spark, no JVM: this is what a scoring service or an MLflow pyfunc model carries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import xxhash

from fm_spark.features.feature_map import FeatureMap, FieldInfo
from fm_spark.features.spec import (
    BAD_FLOAT,
    BAD_INT,
    BAD_LABEL,
    FLOAT_PATTERN,
    HASH_FIRST_ID,
    HEADER,
    INT_PATTERN,
    MALFORMED_JSON,
    MISSING_ID,
    REPLACEMENT_CHAR,
    UNDECODABLE,
    UNSEEN_ID,
    VALUE_PRESENT_ID,
    WRONG_COLUMN_COUNT,
    YYMMDDHH_PATTERN,
)

__all__ = ["EncodedBatch", "FeatureEncoder", "java_double_string"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_RE = re.compile(INT_PATTERN)
_FLOAT_RE = re.compile(FLOAT_PATTERN)
_JSON = json.JSONDecoder()
_JSON_WS = " \t\n\r"


@dataclass
class EncodedBatch:
    """Encoded rows and what was set aside.

    ``ids``: int64 ``[n, num_columns]`` global ids; ``values``: float32 ``[n, num_columns]``
    (1.0 where a column has no value column); ``labels``: float32 ``[n]`` (NaN where unknown)
    or None when the input had no label; ``quarantined``: ``(raw, reason)`` pairs;
    ``index``: int64 ``[n]``, the input position of each encoded row; ``reasons``: object
    ``[number of input rows]``, None where the row was encoded, else its quarantine reason
    (``"header"`` for a skipped header line), so a caller can answer row by row.
    """

    ids: np.ndarray
    values: np.ndarray
    labels: np.ndarray | None
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    reasons: np.ndarray = field(default_factory=lambda: np.zeros(0, object))

    def __len__(self) -> int:
        return len(self.ids)


class _Vocabulary:
    """Token -> local id (kept, or 2 for rare); tokens absent from it are unseen (1)."""

    def __init__(self, tokens: Sequence[str], ids: np.ndarray) -> None:
        self.index = pd.Index(tokens, dtype=object)
        self.ids = np.asarray(ids, dtype=np.int64)

    @classmethod
    def read(cls, path: Path) -> _Vocabulary:
        if not path.exists():
            raise FileNotFoundError(f"vocabulary {path} is missing beside the feature map")
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))
        tables = [pq.read_table(p, columns=["token", "id"]) for p in files]
        tokens: list[str] = []
        ids: list[np.ndarray] = []
        for t in tables:
            tokens += t.column("token").to_pylist()
            ids.append(t.column("id").to_numpy())
        return cls(tokens, np.concatenate(ids) if ids else np.zeros(0, np.int64))

    def lookup(self, tokens: np.ndarray) -> np.ndarray:
        """Local ids of a token array (None = missing)."""
        pos = self.index.get_indexer(tokens)
        out = np.where(pos >= 0, self.ids[np.maximum(pos, 0)], UNSEEN_ID)
        out[pd.isna(tokens)] = MISSING_ID
        return out


class FeatureEncoder:
    """Encodes raw rows with the feature map (and artifacts) of one feature-job output."""

    def __init__(self, fmap: FeatureMap, directory: str | Path) -> None:
        self.feature_map = fmap
        self.directory = Path(directory)
        if fmap.input is None or fmap.label is None:
            raise ValueError(
                f"feature map in {directory} has no input/label description (a synthetic "
                "map?): only the output of `fm-spark featurize` can encode raw rows"
            )
        self._input = fmap.input
        self._label = fmap.label
        self.columns: list[str] = list(self._input.columns)
        self._vocab: dict[str, _Vocabulary] = {}
        for f in fmap.fields:
            if f.encoding in ("vocab", "log_bins"):
                self._vocab[f.name] = _Vocabulary.read(self.directory / (f.vocab_path or ""))

    @classmethod
    def load(cls, feature_map_dir: str | Path) -> FeatureEncoder:
        return cls(FeatureMap.load(feature_map_dir), feature_map_dir)

    @property
    def num_columns(self) -> int:
        return self.feature_map.num_columns

    # -- entry points -------------------------------------------------------------------------
    def encode_lines(
        self, lines: Sequence[str] | Sequence[bytes], require_label: bool = True
    ) -> EncodedBatch:
        """Raw log lines (as in the input files; a trailing newline is ignored).

        Header lines are skipped (neither encoded nor quarantined). ``require_label=False``
        accepts rows without a label (labels NaN), e.g. when scoring.
        """
        raws = [_decode(line) for line in lines]
        fmt = self._input.format
        if fmt == "parquet":
            raise ValueError("parquet input has no lines: use encode_records")
        n_input = len(raws)
        header = self._input.sep.join(self.columns) if self._input.header else None
        positions = np.array([i for i, r in enumerate(raws) if r != header], dtype=np.int64)
        raws = [raws[i] for i in positions]
        reasons = np.full(len(raws), None, dtype=object)
        reasons[[REPLACEMENT_CHAR in r for r in raws]] = UNDECODABLE
        if fmt == "jsonl":
            frame, malformed = _json_frame(raws, self.columns)
            _mark(reasons, malformed, MALFORMED_JSON)
        else:
            frame, wrong = _text_frame(raws, self._input.sep, self.columns)
            _mark(reasons, wrong, WRONG_COLUMN_COUNT)
        batch = self._encode(frame, raws, reasons, positions, require_label, has_label=True)
        everything = np.full(n_input, HEADER, dtype=object)
        everything[positions] = batch.reasons
        batch.reasons = everything
        return batch

    def encode_records(
        self, records: pd.DataFrame, require_label: bool | None = None
    ) -> EncodedBatch:
        """A frame of raw source columns (strings; missing = None/NaN/""); other dtypes are
        converted with ``str``. Without the label column, labels are None and not checked;
        with it, ``require_label`` defaults to True."""
        has_label = self._label.column in records.columns
        needed = {f.source for f in self.feature_map.fields}
        absent = sorted(needed - set(records.columns))
        if absent:
            raise KeyError(f"encode_records: missing source columns {absent}")
        frame = pd.DataFrame(
            {c: _as_strings(records[c]) for c in self.columns if c in records.columns}
        )
        raws = [
            json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False)
            for row in frame.to_dict("records")
        ]
        reasons = np.full(len(frame), None, dtype=object)
        bad_text = np.zeros(len(frame), dtype=bool)
        for c in frame.columns:
            bad_text |= frame[c].str.contains(REPLACEMENT_CHAR, regex=False, na=False).to_numpy()
        reasons[bad_text] = UNDECODABLE
        positions = np.arange(len(frame), dtype=np.int64)
        require = has_label if require_label is None else require_label and has_label
        return self._encode(frame, raws, reasons, positions, require, has_label=has_label)

    # -- the shared path ------------------------------------------------------------------
    def _encode(
        self,
        frame: pd.DataFrame,
        raws: list[str],
        reasons: np.ndarray,
        positions: np.ndarray,
        require_label: bool,
        has_label: bool,
    ) -> EncodedBatch:
        labels = None
        if has_label:
            labels = self._labels(frame[self._label.column])
            missing = frame[self._label.column].isna().to_numpy()
            bad = np.isnan(labels) & (~missing | require_label)
            _mark(reasons, bad, BAD_LABEL)
        numeric = [f for f in self.feature_map.fields if f.kind == "numeric"]
        parsed: dict[str, _Numbers] = {}
        for dtype, reason in (("int", BAD_INT), ("float", BAD_FLOAT)):
            for f in (f for f in numeric if f.dtype == dtype):
                parsed[f.name], bad = _parse_numbers(
                    _transformed(frame[f.source], f.transform), dtype
                )
                _mark(reasons, bad, reason)
        good = pd.isna(reasons)
        quarantined = [(raws[i], reasons[i]) for i in np.flatnonzero(~good)]
        frame = frame.loc[good].reset_index(drop=True)
        parsed = {k: v[good] for k, v in parsed.items()}
        ids = np.zeros((len(frame), self.num_columns), dtype=np.int64)
        values = np.ones((len(frame), self.num_columns), dtype=np.float32)
        col = 0
        for f in self.feature_map.fields:
            local, vals = self._encode_field(f, frame, parsed.get(f.name))
            width = local.shape[1]
            ids[:, col : col + width] = local + f.offset
            if vals is not None:
                values[:, col : col + width] = vals
            col += width
        return EncodedBatch(
            ids=ids,
            values=values,
            labels=labels[good] if labels is not None else None,
            quarantined=quarantined,
            index=positions[good],
            reasons=reasons,
        )

    def _labels(self, col: pd.Series) -> np.ndarray:
        mapping = {**dict.fromkeys(self._label.negative, 0.0)}
        mapping.update(dict.fromkeys(self._label.positive, 1.0))
        return col.map(mapping).to_numpy(dtype=np.float32, na_value=np.nan)

    def _encode_field(
        self, f: FieldInfo, frame: pd.DataFrame, num: _Numbers | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Local ids ``[n, width]`` and values (None: all 1.0) of one field."""
        n = len(frame)
        if f.encoding == "quantile_bins":
            assert num is not None
            edges = np.asarray(f.bin_edges or [], dtype=np.float64)
            ids = np.searchsorted(edges, np.where(num.present, num.x, 0.0), side="right") + 1
            return np.where(num.present, ids, MISSING_ID).reshape(n, 1), None
        if f.encoding == "value":
            assert num is not None
            ids = np.where(num.present, VALUE_PRESENT_ID, MISSING_ID).reshape(n, 1)
            vals = np.where(num.present, num.x, 1.0).astype(np.float32)
            return ids, vals.reshape(n, 1)
        raw = _transformed(frame[f.source], f.transform)
        if f.kind == "multi_categorical":
            slots = _multi_slots(raw, f.separator or "", f.max_values or 1)
        elif f.encoding == "log_bins":
            assert num is not None
            slots = [_log_bin_tokens(num, f.dtype)]
        else:
            slots = [raw.to_numpy(dtype=object)]
        ids = np.stack([self._index(f, s) for s in slots], axis=1)
        if f.kind != "multi_categorical":
            return ids, None
        vals = np.stack([pd.notna(s) for s in slots], axis=1).astype(np.float32)
        vals[:, 0] = 1.0  # a token, or the missing id of a row without any token
        return ids, vals

    def _index(self, f: FieldInfo, tokens: np.ndarray) -> np.ndarray:
        if f.encoding == "hash":
            return _hash_ids(tokens, f.hash_salt or "", f.num_buckets or 1)
        return self._vocab[f.name].lookup(tokens)


# --------------------------------------------------------------------------------------------
# per-row parsing (the Python twins of fm_spark.features.source)


def _decode(line: str | bytes) -> str:
    text = line.decode("utf-8", errors="replace") if isinstance(line, bytes | bytearray) else line
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\n", "\r")) else text


def _mark(reasons: np.ndarray, failed: np.ndarray, reason: str) -> None:
    """Give ``reason`` to failing rows that have none yet (the first rule wins)."""
    reasons[np.asarray(failed, dtype=bool) & pd.isna(reasons)] = reason


def _empty_frame(n: int, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([None] * n, dtype=object) for c in columns})


def _text_frame(raws: list[str], sep: str, columns: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    parts = pd.Series(raws, dtype=object).str.split(sep, regex=False)
    wrong = (parts.str.len() != len(columns)).to_numpy()
    frame = _empty_frame(len(raws), columns)
    ok = np.flatnonzero(~wrong)
    if len(ok):
        cells = pd.DataFrame(parts.iloc[ok].tolist(), columns=columns, index=ok, dtype=object)
        frame.loc[ok, columns] = cells.where(cells != "", None)
    return frame, wrong


def _json_frame(raws: list[str], columns: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """Like Spark's ``from_json`` with an all-string schema: the first JSON value of the line
    must be an object; non-string values become their JSON text as Jackson renders it."""
    rows: list[dict[str, Any]] = []
    malformed = np.zeros(len(raws), dtype=bool)
    for i, raw in enumerate(raws):
        try:
            obj, _ = _JSON.raw_decode(raw.lstrip(_JSON_WS))
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            malformed[i] = True
            rows.append({})
            continue
        rows.append({c: _json_text(obj.get(c)) for c in columns})
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame.where(frame.notna() & (frame != ""), None), malformed


def _json_text(v: Any) -> str | None:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return '"NaN"'
        if math.isinf(v):
            return '"Infinity"' if v > 0 else '"-Infinity"'
        return java_double_string(v)
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def java_double_string(x: float) -> str:
    """Java's ``Double.toString`` (what Spark's JSON reader renders a number as), from
    Python's shortest round-trip digits. JDK 17 prints a few values with non-shortest digits
    (e.g. 1.0E23 as 9.999999999999999E22); those rare numbers differ."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    r = repr(abs(x))
    mant, _, exp = r.partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) + int(exp or 0) - (len(whole + frac) - len((whole + frac).lstrip("0")))
    digits = digits.rstrip("0") or "0"
    if 1e-3 <= abs(x) < 1e7:
        if point <= 0:
            text = "0." + "0" * -point + digits
        elif point >= len(digits):
            text = digits + "0" * (point - len(digits)) + ".0"
        else:
            text = digits[:point] + "." + digits[point:]
    else:
        text = f"{digits[0]}.{digits[1:] or '0'}E{point - 1}"
    return sign + text


def _as_strings(col: pd.Series) -> pd.Series:
    """Raw source values as strings with None for missing (None, NaN, "")."""

    def conv(v: Any) -> str | None:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
            return None
        s = v if isinstance(v, str) else str(v)
        return s if s != "" else None

    return pd.Series([conv(v) for v in col.tolist()], dtype=object)


# --------------------------------------------------------------------------------------------
# per-field conversions (the Python twins of fm_spark.features.tokens / quarantine)


def _transformed(col: pd.Series, transform: str) -> pd.Series:
    if transform == "none":
        return col
    s = col.astype(object)
    ok = s.str.fullmatch(YYMMDDHH_PATTERN, na=False).astype(bool)
    if transform == "yymmddhh_hour":
        return s.str[6:8].where(ok, None)
    if transform == "yymmddhh_weekday":
        codes, days = _per_unique(s.where(ok, None), _weekday)
        table = np.array([*days, None], dtype=object)  # code -1 picks the trailing None
        return pd.Series(table[codes], index=s.index, dtype=object)
    raise ValueError(f"unknown transform {transform!r}")


@dataclass
class _Numbers:
    """A parsed numeric column: ``exact`` (int64 for ints, float64 for floats; 0 where not
    present), ``x`` (float64, NaN where not present) and ``present``."""

    exact: np.ndarray
    x: np.ndarray
    present: np.ndarray

    def __getitem__(self, mask: np.ndarray) -> _Numbers:
        return _Numbers(self.exact[mask], self.x[mask], self.present[mask])


def _per_unique(col: pd.Series, fn: Any) -> tuple[np.ndarray, list[Any]]:
    """``fn`` applied once per distinct non-missing value: (codes, results); code -1 = missing."""
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    return codes, [fn(v) for v in uniques]


def _weekday(v: str) -> str | None:
    """Spark's ``dayofweek`` (1 = Sunday .. 7 = Saturday) of 20YY-MM-DD; None if invalid."""
    try:
        d = date(2000 + int(v[0:2]), int(v[2:4]), int(v[4:6]))
    except ValueError:
        return None
    return str(d.isoweekday() % 7 + 1)


def _parse_numbers(raw: pd.Series, dtype: str) -> tuple[_Numbers, np.ndarray]:
    """Parse a numeric field as Spark's rules do; returns the numbers and the bad-row mask."""
    pattern = _INT_RE if dtype == "int" else _FLOAT_RE
    codes, parsed = _per_unique(raw, lambda v: _parse_number(v, pattern, dtype))
    ok = np.array([p is not None for p in parsed], dtype=bool)
    kind = np.int64 if dtype == "int" else np.float64
    table = np.array([p if p is not None else 0 for p in parsed], dtype=kind)
    has = codes >= 0
    present = has & ok[np.maximum(codes, 0)] if len(parsed) else np.zeros(len(raw), bool)
    bad = has & ~present
    exact = np.where(present, table[np.maximum(codes, 0)] if len(parsed) else 0, 0).astype(kind)
    x = np.where(present, exact.astype(np.float64), np.nan)
    return _Numbers(exact, x, present), bad


def _parse_number(v: str, pattern: re.Pattern[str], dtype: str) -> int | float | None:
    if not pattern.fullmatch(v):
        return None
    if dtype == "int":
        i = int(v)
        return i if _INT64_MIN <= i <= _INT64_MAX else None
    x = float(v)
    return x if math.isfinite(x) else None


def _log_bin_tokens(num: _Numbers, dtype: str) -> np.ndarray:
    """``floor(ln(x)^2)`` for x > 2, ``floor(x)`` otherwise, as integer text (None: missing).

    ``ln(x) * ln(x)`` as in Spark; numpy's log agrees with Java's StrictMath.log on the whole
    range the parity test covers."""
    big = num.present & (num.x > 2)
    ln = np.log(np.where(big, num.x, 1.0))
    binned = np.floor(ln * ln).astype(np.int64)
    small = num.exact if dtype == "int" else _floor_int64(np.where(num.present, num.x, 0.0))
    tokens = np.where(big, binned, small).astype(str).astype(object)
    tokens[~num.present] = None
    return tokens


def _floor_int64(x: np.ndarray) -> np.ndarray:
    """Spark's ``cast(floor(x) as bigint)``: saturates at the int64 range."""
    f = np.floor(x)
    high, low = f >= 2.0**63, f < -(2.0**63)
    out = np.where(high | low, 0.0, f).astype(np.int64)
    out[high], out[low] = _INT64_MAX, _INT64_MIN
    return out


def _multi_slots(raw: pd.Series, separator: str, max_values: int) -> list[np.ndarray]:
    """Distinct non-empty tokens in first-occurrence order, the first ``max_values``."""
    lists = [
        list(dict.fromkeys(t for t in v.split(separator) if t))[:max_values]
        if isinstance(v, str)
        else []
        for v in raw.tolist()
    ]
    return [
        np.array([toks[k] if k < len(toks) else None for toks in lists], dtype=object)
        for k in range(max_values)
    ]


def _hash_ids(tokens: np.ndarray, salt: str, num_buckets: int) -> np.ndarray:
    """``1 + pmod(xxhash64(salt + token, seed=42), num_buckets)`` as Spark computes it."""
    codes, uniques = pd.factorize(pd.Series(tokens, dtype=object))
    if len(uniques) == 0:
        return np.full(len(tokens), MISSING_ID, dtype=np.int64)
    digests = np.array(
        [xxhash.xxh64_intdigest((salt + t).encode("utf-8"), seed=42) for t in uniques],
        dtype=np.uint64,
    )
    buckets = digests.view(np.int64) % np.int64(num_buckets)  # numpy %: sign of the divisor
    ids = np.where(codes >= 0, HASH_FIRST_ID + buckets[np.maximum(codes, 0)], MISSING_ID)
    return ids.astype(np.int64)
