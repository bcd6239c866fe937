"""The serving encoder: raw rows -> the ids the feature job writes, with numpy/pandas.

``FeatureEncoder.load(feature_map_dir)`` reads ``feature_map.json`` and the artifacts beside
it (a finished dataset only: ``_SUCCESS`` must be there); ``encode_lines`` takes raw log lines
(str or bytes), ``encode_records`` a pandas frame of raw source columns. Both apply the
quarantine rules (:mod:`.spec`) in the same order as the feature job and give exactly the ids
Spark gives (the parity tests hold them to that). Each field is encoded column-wise by its
encoding's numpy executor (:mod:`.encodings`); only what is per row by nature (decoding,
splitting a quoted CSV line, JSON parsing) loops over rows, and what is per value (parsing a
number, hashing a token) runs once per distinct value.

No Spark, no JVM: this is what a scoring service or an MLflow pyfunc model carries.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fm_spark.features.encodings import Encoding, FieldInput, encoding_class
from fm_spark.features.encodings.modifiers import transformed
from fm_spark.features.encodings.numbers import Numbers, parse_numbers
from fm_spark.features.feature_map import FEATURE_MAP_FILE, FeatureMap
from fm_spark.features.spec import (
    BAD_FLOAT,
    BAD_INT,
    BAD_LABEL,
    HEADER,
    MALFORMED_CSV,
    MALFORMED_JSON,
    REPLACEMENT_CHAR,
    SUCCESS_FILE,
    UNDECODABLE,
    WRONG_COLUMN_COUNT,
    csv_patterns,
    regex_quote,
)

__all__ = ["EncodedBatch", "FeatureEncoder", "java_double_string"]

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
        self.encodings: list[Encoding] = []
        for f in fmap.fields:
            enc = encoding_class(f.encoding).from_info(f)
            enc.load(self.directory)
            self.encodings.append(enc)

    @classmethod
    def load(cls, feature_map_dir: str | Path) -> FeatureEncoder:
        """The encoder of a finished feature-job output (a folder with ``_SUCCESS``)."""
        path = Path(feature_map_dir)
        directory = path.parent if path.name == FEATURE_MAP_FILE else path
        if not (directory / SUCCESS_FILE).exists():
            raise FileNotFoundError(
                f"{directory} has no {SUCCESS_FILE}: not a finished `fm-spark featurize` "
                "output (still being written, failed, or not a dataset)"
            )
        return cls(FeatureMap.load(directory), directory)

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
        texts = pd.Series(raws, dtype=object)
        positions = np.flatnonzero((texts != header).to_numpy())
        raws = texts.iloc[positions].tolist()
        reasons = np.full(len(raws), None, dtype=object)
        undecodable = texts.iloc[positions].str.contains(REPLACEMENT_CHAR, regex=False)
        reasons[undecodable.to_numpy(dtype=bool)] = UNDECODABLE
        if fmt == "jsonl":
            frame, malformed = _json_frame(raws, self.columns)
            _mark(reasons, malformed, MALFORMED_JSON)
        else:
            frame, malformed, wrong = _text_frame(
                raws, self._input.sep, self.columns, quoted=fmt == "csv"
            )
            _mark(reasons, malformed, MALFORMED_CSV)
            _mark(reasons, wrong, WRONG_COLUMN_COUNT)
        cells = frame.to_numpy(dtype=object)
        columns = {c: cells[:, j] for j, c in enumerate(frame.columns)}
        batch = self._encode(columns, raws, reasons, positions, require_label, has_label=True)
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
        names = [c for c in self.columns if c in records.columns]
        cells = _string_cells(records, names)
        reasons = np.full(len(cells), None, dtype=object)
        reasons[_undecodable(cells)] = UNDECODABLE
        positions = np.arange(len(cells), dtype=np.int64)
        require = has_label if require_label is None else require_label and has_label
        columns = {c: cells[:, j] for j, c in enumerate(names)}
        raws = _LazyRecords(names, cells)
        return self._encode(columns, raws, reasons, positions, require, has_label=has_label)

    # -- the shared path ------------------------------------------------------------------
    def _encode(
        self,
        columns: dict[str, np.ndarray],
        raws: Sequence[str],
        reasons: np.ndarray,
        positions: np.ndarray,
        require_label: bool,
        has_label: bool,
    ) -> EncodedBatch:
        """Quarantine, then encode field by field. ``columns``: the raw strings of each source
        column (object arrays, None = missing), whole-batch numpy so that a batch of one row
        costs little more than its fields."""
        labels = None
        if has_label:
            label_col = columns[self._label.column]
            labels = self._labels(label_col)
            bad = np.isnan(labels) & (~pd.isna(label_col) | require_label)
            _mark(reasons, bad, BAD_LABEL)
        fields = self.feature_map.fields
        raw = {f.name: _field_raw(columns[f.source], f.transform) for f in fields}
        parsed: dict[str, Numbers] = {}
        for dtype, reason in (("int", BAD_INT), ("float", BAD_FLOAT)):
            for f in (f for f in fields if f.kind == "numeric" and f.dtype == dtype):
                parsed[f.name], bad = parse_numbers(raw[f.name], dtype)
                _mark(reasons, bad, reason)
        good = pd.isna(reasons)
        quarantined = []
        if not good.all():
            quarantined = [(raws[i], reasons[i]) for i in np.flatnonzero(~good)]
            raw = {k: v[good] for k, v in raw.items()}
            parsed = {k: v[good] for k, v in parsed.items()}
            if labels is not None:
                labels = labels[good]
            positions = positions[good]
        n = len(positions)
        ids = np.zeros((n, self.num_columns), dtype=np.int64)
        values = np.ones((n, self.num_columns), dtype=np.float32)
        col = 0
        for f, enc in zip(fields, self.encodings, strict=True):
            local, vals = enc.encode(FieldInput(raw[f.name], parsed.get(f.name)))
            width = local.shape[1]
            ids[:, col : col + width] = local + f.offset
            if vals is not None:
                values[:, col : col + width] = vals
            col += width
        return EncodedBatch(
            ids=ids,
            values=values,
            labels=labels,
            quarantined=quarantined,
            index=positions,
            reasons=reasons,
        )

    def _labels(self, col: np.ndarray) -> np.ndarray:
        mapping = {**dict.fromkeys(self._label.negative, 0.0)}
        mapping.update(dict.fromkeys(self._label.positive, 1.0))
        labels = pd.Series(col, dtype=object).map(mapping)
        return labels.to_numpy(dtype=np.float32, na_value=np.nan)


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


def _text_frame(
    raws: list[str], sep: str, columns: list[str], quoted: bool
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Split TSV/CSV lines into string columns: (frame, malformed quoting, wrong count).

    Lines without a quote are split literally, all at once; a CSV line with a quote must be
    well formed (RFC 4180, as :func:`~fm_spark.features.spec.csv_patterns` says) and is
    split field by field, its quoted fields unquoted (``""`` -> ``"``).
    """
    lines = pd.Series(raws, dtype=object)
    parts = lines.str.split(sep, regex=False)
    malformed = np.zeros(len(raws), dtype=bool)
    if quoted and len(raws):
        has_quote = lines.str.contains('"', regex=False).to_numpy(dtype=bool)
        if has_quote.any():
            line_re, field_re = _csv_regexes(sep)
            for i in np.flatnonzero(has_quote):
                if line_re.fullmatch(raws[i]):
                    parts.iat[i] = _csv_fields(raws[i], field_re)
                else:
                    malformed[i] = True
    wrong = ~malformed & (parts.str.len() != len(columns)).to_numpy()
    frame = _empty_frame(len(raws), columns)
    ok = np.flatnonzero(~wrong & ~malformed)
    if len(ok):
        cells = pd.DataFrame(parts.iloc[ok].tolist(), columns=columns, index=ok, dtype=object)
        frame.loc[ok, columns] = cells.where(cells != "", None)
    return frame, malformed, wrong


def _csv_regexes(sep: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    line, quoted = csv_patterns(sep)
    unquoted = f'[^"{regex_quote(sep[0])}]*' if len(sep) == 1 else '[^"]*?'
    field = re.compile(f"({quoted}|{unquoted})(?:{regex_quote(sep)}|$)")
    return re.compile(line), field


def _csv_fields(line: str, field_re: re.Pattern[str]) -> list[str]:
    """The fields of a well-formed CSV line, unquoted."""
    out, pos = [], 0
    while True:
        m = field_re.match(line, pos)
        assert m is not None, "the line was checked against the line pattern"
        cell = m.group(1)
        out.append(cell[1:-1].replace('""', '"') if cell.startswith('"') else cell)
        if m.end() == len(line) and (m.end() == m.end(1)):
            return out
        pos = m.end()


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


def _field_raw(col: np.ndarray, transform: str) -> np.ndarray:
    """A field's (transformed) raw strings as an object array (None = missing)."""
    if transform == "none":
        return col
    return transformed(pd.Series(col, dtype=object), transform).to_numpy(dtype=object)


def _string_cells(records: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The frame's ``names`` columns as one object array ``[n, len(names)]`` of strings,
    None for missing (None, NaN, NA, ""), converted all at once; only a column holding
    non-strings goes through pandas' string conversion (:func:`_as_strings`)."""
    where = records.columns.get_indexer(names)
    cells = records.to_numpy(dtype=object)[:, where]
    for j, c in enumerate(where):
        if pd.api.types.infer_dtype(cells[:, j], skipna=True) not in ("string", "empty"):
            cells[:, j] = _as_strings(records.iloc[:, c]).to_numpy(dtype=object)
    cells[pd.isna(cells) | (cells == "")] = None
    return cells


def _undecodable(cells: np.ndarray) -> np.ndarray:
    """Rows with a cell holding U+FFFD (text that was not valid UTF-8), all cells at once."""
    if cells.size == 0:
        return np.zeros(len(cells), dtype=bool)
    flat = pd.Series(cells.ravel(), dtype=object)
    hit = flat.str.contains(REPLACEMENT_CHAR, regex=False, na=False).to_numpy(dtype=bool)
    return hit.reshape(cells.shape).any(axis=1)


def _as_strings(col: pd.Series) -> pd.Series:
    """Raw source values as object strings, None for missing (None, NaN, NA, "").

    Non-string values become ``str(value)`` (pandas' string conversion), column-wise.
    """
    missing = col.isna().to_numpy()
    strings = col.astype(object).where(~missing, None)
    if pd.api.types.infer_dtype(strings, skipna=True) not in ("string", "empty"):
        strings = col.astype("string").astype(object).where(~missing, None)
    return strings.where(strings != "", None).reset_index(drop=True)


class _LazyRecords(Sequence[str]):
    """The raw text of a record (its JSON object), built only for the rows quarantined."""

    def __init__(self, names: list[str], cells: np.ndarray) -> None:
        self.names = names
        self.cells = cells

    def __len__(self) -> int:
        return len(self.cells)

    def __getitem__(self, i):  # type: ignore[override]
        row = zip(self.names, self.cells[i], strict=True)
        return json.dumps({k: v for k, v in row if v is not None}, ensure_ascii=False)
