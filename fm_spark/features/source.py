"""Reading raw logs into one string column per configured input column, keeping the raw line.

Every format ends in the same frame: ``_raw`` (the line as read, for quarantine and the hash
split), ``_source_file``, ``_format_error``/``_format_detail`` (malformed_json or
wrong_column_count, else null) and one string column per ``input.columns`` entry, null when
missing (an empty string is missing). Nothing is collected and no Python runs per row.

Lines are decoded explicitly (invalid UTF-8 -> U+FFFD, then quarantined as undecodable).
TSV lines are split on the separator literally (log formats do not quote); CSV lines follow
RFC 4180 quoting (``"a,b"``, ``""`` inside quotes) through Spark's ``from_csv`` on the raw
line, after a check that the quoting is well formed (else ``malformed_csv``) and a column
count of its own (``from_csv`` pads and drops columns silently). A quoted field cannot span
lines. JSON lines are parsed with ``from_json`` over the text, not
``spark.read.json``, so the raw line of every row (good or bad) is kept as read.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fm_spark.config import InputSpec
from fm_spark.features.encodings.numbers import full_match
from fm_spark.features.quarantine import FORMAT_DETAIL, FORMAT_ERROR, RAW, SOURCE_FILE
from fm_spark.features.spec import (
    MALFORMED_CSV,
    MALFORMED_JSON,
    WRONG_COLUMN_COUNT,
    csv_patterns,
    regex_quote,
)

__all__ = [
    "CORRUPT_RECORD",
    "decoded",
    "header_line",
    "json_schema",
    "parse_json_lines",
    "parse_parquet",
    "parse_text_lines",
    "read_raw",
]

CORRUPT_RECORD = "_corrupt_record"


def read_raw(spark: SparkSession, spec: InputSpec, path: str | list[str]) -> DataFrame:
    """Read a file, folder or glob (or a list of them) in the configured format."""
    if spec.format == "parquet":
        return parse_parquet(spark.read.parquet(*_paths(path)), spec)
    lines = spark.read.text(_paths(path)).select(
        decoded(F.col("value")).alias("value"), F.input_file_name().alias(SOURCE_FILE)
    )
    if spec.format == "jsonl":
        return parse_json_lines(lines, spec)
    return parse_text_lines(lines, spec)


def decoded(line: Column) -> Column:
    """The line as valid UTF-8, undecodable bytes replaced by U+FFFD.

    Spark's text reader keeps the raw bytes (it only replaces them when a row becomes a Java
    string), so the quarantine's ``undecodable`` check needs an explicit decode.
    """
    return F.decode(line.cast("binary"), "UTF-8")


def _paths(path: str | list[str]) -> list[str]:
    return [path] if isinstance(path, str) else list(path)


def _missing_as_null(col: Column) -> Column:
    return F.when(col != F.lit(""), col)


def header_line(spec: InputSpec) -> str:
    return spec.sep.join(spec.columns)


def parse_text_lines(lines: DataFrame, spec: InputSpec) -> DataFrame:
    """TSV/CSV lines (column ``value``) -> the raw frame; header lines are dropped."""
    if spec.header:
        lines = lines.where(F.col("value") != F.lit(header_line(spec)))
    n = len(spec.columns)
    value = F.col("value")
    sep = regex_quote(spec.sep)
    if spec.format == "csv":
        line_pattern, quoted = csv_patterns(spec.sep)
        count = F.size(F.split(F.regexp_replace(value, quoted, ""), sep, -1))
        schema = ", ".join(f"`{i}` string" for i in range(n))
        options = {"sep": spec.sep, "escape": '"', "mode": "PERMISSIVE"}
        parsed = F.from_csv(value, schema, options)
        cells = [parsed.getField(str(i)) for i in range(n)]
        malformed = ~full_match(value, line_pattern)
    else:
        parts = F.split(value, sep, -1)
        count = F.size(parts)
        cells = [parts.getItem(i) for i in range(n)]
        malformed = F.lit(False)
    wrong = count != F.lit(n)
    error = F.when(malformed, F.lit(MALFORMED_CSV)).when(wrong, F.lit(WRONG_COLUMN_COUNT))
    detail = F.when(malformed, F.lit("quoting is not RFC 4180")).when(
        wrong, F.format_string(f"expected {n} columns, got %d", count)
    )
    return lines.select(
        value.alias(RAW),
        _source_file(lines),
        error.alias(FORMAT_ERROR),
        detail.alias(FORMAT_DETAIL),
        # A bad line's cells are never used: its format error is the first reason it gets.
        *[_missing_as_null(c).alias(name) for name, c in zip(spec.columns, cells, strict=True)],
    )


def json_schema(spec: InputSpec) -> T.StructType:
    fields = [T.StructField(c, T.StringType()) for c in spec.columns]
    return T.StructType([*fields, T.StructField(CORRUPT_RECORD, T.StringType())])


def parse_json_lines(lines: DataFrame, spec: InputSpec) -> DataFrame:
    """JSON lines (column ``value``) -> the raw frame.

    Every configured key is read as a string: JSON strings as they are, other values as
    their JSON text (numbers as Jackson renders them: ``1.5e3`` -> ``1500.0``), null as
    missing. A line that is not a JSON object (including an empty line) is malformed.
    """
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT_RECORD}
    parsed = F.from_json(F.col("value"), json_schema(spec), options)
    bad = parsed.isNull() | parsed.getField(CORRUPT_RECORD).isNotNull()
    return lines.select(
        F.col("value").alias(RAW),
        _source_file(lines),
        F.when(bad, F.lit(MALFORMED_JSON)).alias(FORMAT_ERROR),
        F.when(bad, F.lit("not a JSON object")).alias(FORMAT_DETAIL),
        *[_missing_as_null(parsed.getField(c)).alias(c) for c in spec.columns],
    )


def parse_parquet(df: DataFrame, spec: InputSpec) -> DataFrame:
    """Parquet rows -> the raw frame: configured columns cast to string; the raw "line" is
    their JSON object (``to_json``), which the hash split and the quarantine use."""
    cols = [F.col(c).cast("string").alias(c) for c in spec.columns]
    return df.select(
        F.to_json(F.struct(*cols)).alias(RAW),
        F.input_file_name().alias(SOURCE_FILE),
        F.lit(None).cast("string").alias(FORMAT_ERROR),
        F.lit(None).cast("string").alias(FORMAT_DETAIL),
        *[_missing_as_null(F.col(c).cast("string")).alias(c) for c in spec.columns],
    )


def _source_file(lines: DataFrame) -> Column:
    if SOURCE_FILE in lines.columns:
        return F.col(SOURCE_FILE)
    return F.lit(None).cast("string").alias(SOURCE_FILE)
