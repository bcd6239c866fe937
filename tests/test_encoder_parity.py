"""The pure-Python serving encoder gives exactly the ids (values, labels, quarantine reasons)
that Spark wrote, for every input format; and the Spark featurizer re-loaded from a feature
map (the batch-scoring path) agrees with it row by row."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from featurize_cases import (
    BAD,
    COLUMNS,
    FILLER,
    TEST,
    TRAIN,
    VALID,
    featurized,
    mini_config,
    mini_lines,
)
from pyspark.sql import functions as F

from fm_spark.config import load_config
from fm_spark.features.encoder import EncodedBatch, FeatureEncoder, java_double_string
from fm_spark.features.encodings.log_bins import log_bin_token, log_bin_tokens
from fm_spark.features.encodings.numbers import Numbers
from fm_spark.features.feature_map import FeatureMap
from fm_spark.features.featurizer import FeaturizerModel
from fm_spark.features.job import featurize
from fm_spark.features.quarantine import RAW, REASON, parse_rules, with_reason
from fm_spark.features.source import read_raw

SPLITS = ("train", "valid", "test")


def spark_rows(out: Path) -> Counter:
    """(label, ids, values) of every written row; columns without a value column: 1.0."""
    fmap = FeatureMap.load(out)
    rows: Counter = Counter()
    for split in SPLITS:
        t = pq.read_table(out / split)
        ones = np.ones(t.num_rows, np.float32)
        ids = np.stack([t.column(c).to_numpy() for c in fmap.column_names], 1)
        vals = np.stack([t.column(v).to_numpy() if v else ones for v in fmap.value_columns], 1)
        labels = t.column("label").to_numpy().tolist()
        rows.update(
            (lab, tuple(i), tuple(v))
            for lab, i, v in zip(labels, ids.tolist(), vals.tolist(), strict=True)
        )
    return rows


def python_rows(batch: EncodedBatch) -> Counter:
    assert batch.ids.dtype == np.int64 and batch.values.dtype == np.float32
    return Counter(
        (lab, tuple(i), tuple(v))
        for lab, i, v in zip(
            batch.labels.tolist(), batch.ids.tolist(), batch.values.tolist(), strict=True
        )
    )


def assert_parity(out: Path, batch: EncodedBatch, summary: dict, split_key_lines: int = 0):
    """Same rows; same reasons, except that rows quarantined by Spark for their split key are
    encoded by Python (scoring has no split)."""
    spark_reasons = {k: v for k, v in summary["quarantined_by_reason"].items() if v}
    spark_reasons.pop("bad_split_key", None)
    assert Counter(r for _, r in batch.quarantined) == spark_reasons
    expected = spark_rows(out)
    got = python_rows(batch)
    assert sum(got.values()) == sum(expected.values()) + split_key_lines
    assert not expected - got, "rows Spark wrote that Python does not produce"
    assert sum((got - expected).values()) == split_key_lines


@pytest.fixture(scope="module")
def mini(spark, tmp_path_factory):
    return featurized("mini", spark, tmp_path_factory, mini_config(), mini_lines(), "mini.csv")


def test_python_encoder_matches_spark_on_hand_made_lines(mini):
    out, summary, _ = mini
    encoder = FeatureEncoder.load(out)
    lines = mini_lines()
    batch = encoder.encode_lines(lines)
    assert_parity(out, batch, summary, split_key_lines=1)
    # str and bytes give the same; the index points back into the input (header skipped).
    as_str = encoder.encode_lines([x.decode("utf-8", "replace") + "\n" for x in lines])
    np.testing.assert_array_equal(as_str.ids, batch.ids)
    assert 0 not in batch.index and len(batch.index) == len(batch)
    bad = {line.decode("utf-8", "replace"): reason for line, reason in BAD}
    assert all(bad[raw] == reason for raw, reason in batch.quarantined)
    # One reason per input line: None where encoded, "header" for the skipped header.
    assert len(batch.reasons) == len(lines) and batch.reasons[0] == "header"
    assert all(r is None for r in batch.reasons[batch.index])
    flagged = [r for r in batch.reasons if r not in (None, "header")]
    assert sorted(flagged) == sorted(r for _, r in batch.quarantined)


def test_reloaded_spark_featurizer_matches_python_row_by_row(spark, mini):
    """The batch-scoring path: load the fitted featurizer, transform raw rows, keep columns."""
    out, _, src = mini
    cfg = mini_config()
    model = FeaturizerModel.load(spark, str(out))
    rows = with_reason(read_raw(spark, cfg.input, str(src)), parse_rules(cfg), cfg.label)
    scored = model.transform(rows.where(F.col(REASON).isNull()), keep=[RAW, "ts"])
    assert scored.columns[:2] == [RAW, "ts"]
    got = {r[RAW]: tuple(r[c] for c in model.id_columns) for r in scored.collect()}
    lines = [*TRAIN, FILLER, *VALID, *TEST]
    batch = FeatureEncoder.load(out).encode_lines(lines)
    assert len(batch) == len(lines) and not batch.quarantined
    assert {line: tuple(ids) for line, ids in zip(lines, batch.ids.tolist(), strict=True)} == {
        line: got[line] for line in lines
    }


def test_python_encoder_matches_spark_on_a_generated_criteo_log(spark, tmp_path):
    """39 fields of a realistic log (two of them hashed), with malformed lines of every kind."""
    from fm_spark.datagen import generate

    log = tmp_path / "criteo.tsv"
    generate(format="criteo", rows=3000, seed=3, output=log, bad_fraction=0.02)
    cfg = load_config(
        Path(__file__).parents[1] / "conf" / "criteo.yaml",
        [
            "encoding.min_count=3",
            "fields.C3.encoding=hash",
            "fields.C3.num_buckets=1000",
            "fields.C21.encoding=hash",
            "max_bad_fraction=0.05",
        ],
    )
    out = tmp_path / "out"
    summary = featurize(cfg, str(log), str(out), spark=spark)
    assert summary["rows_quarantined"] == 60
    batch = FeatureEncoder.load(out).encode_lines(log.read_bytes().splitlines())
    assert_parity(out, batch, summary)
    fmap = FeatureMap.load(out)
    sizes = {f.name: f.size for f in fmap.fields}
    assert sizes["C3"] == 1001 and sizes["C21"] == 1 + (1 << 20)


def test_log_bins_tokens_agree_over_a_wide_range(spark):
    """floor(ln(x)^2) near every bin boundary: Spark (StrictMath.log) vs numpy."""
    extra = [-(2**63), -(10**12), -5, 2**31, 2**40, 2**53 + 1, 10**15 + 7, 10**18, 2**63 - 1]
    df = spark.range(-3, 1_000_001).union(spark.createDataFrame([(v,) for v in extra], "id long"))
    token = log_bin_token(F.col("id"), "int")
    agg = (
        df.groupBy(token.alias("t"))
        .agg(F.count("*").alias("n"), F.min("id").alias("lo"), F.max("id").alias("hi"))
        .collect()
    )
    spark_side = {r["t"]: (r["n"], r["lo"], r["hi"]) for r in agg}
    xs = np.concatenate([np.arange(-3, 1_000_001, dtype=np.int64), np.array(extra, np.int64)])
    ones = np.ones(len(xs), dtype=bool)
    tokens = log_bin_tokens(Numbers(xs, xs.astype(np.float64), ones), "int")
    py = pd.DataFrame({"t": tokens, "x": xs}).groupby("t")["x"].agg(["count", "min", "max"])
    python_side = {t: (int(r["count"]), int(r["min"]), int(r["max"])) for t, r in py.iterrows()}
    assert python_side == spark_side
    assert spark_side["190"][2] == 1_000_000 and spark_side["2"][1] == 2  # 2 -> "2", 5 -> "2"
    # Floats: floor(x) below 2, saturating casts at the extremes.
    floats = [-1e300, -2.5, -0.5, 0.0, 0.99, 1.5, 2.0, 2.000001, 7.389056, 1e300]
    fdf = spark.createDataFrame([(v,) for v in floats], "x double")
    spark_f = [r[0] for r in fdf.select(log_bin_token(F.col("x"), "float")).collect()]
    xf = np.array(floats)
    py_f = log_bin_tokens(Numbers(xf, xf, np.ones(len(xf), bool)), "float").tolist()
    assert py_f == spark_f


def _json_line(csv_line: str) -> str:
    """The hand-made CSV row as a JSON object, with JSON numbers where the value is one."""
    obj: dict[str, object] = {}
    for col, v in zip(COLUMNS, csv_line.split(","), strict=True):
        if v == "":
            continue
        if col in ("label", "cnt"):
            obj[col] = int(v)
        elif col == "price":
            obj[col] = float(v)
        else:
            obj[col] = v
    return json.dumps(obj)


def test_python_encoder_matches_spark_on_json_lines(spark, tmp_path_factory):
    good = [_json_line(x) for x in [*TRAIN, *VALID, *TEST]]
    special = [
        '{"label": 1, "ts": "1", "cat": true, "price": 2.5e-05, "cnt": 12}',
        '{"label": "0", "ts": "1", "cat": {"k": [1, 2]}, "num": "7", "price": 1e7}',
        '  {"label": 0, "ts": "2", "cat": "a"} trailing text is ignored, as Spark does',
        '{"label": 0, "ts": "3", "cat": "a", "cat": "b"}',
        '{"label": 0, "ts": "1", "price": 1e400}',  # Infinity: bad_float
    ]
    malformed = ["not json", '["a", "b"]', "", '"just a string"', "{broken"]
    lines = [x.encode() for x in [*good, *special, *malformed]]
    out, summary, _ = featurized(
        "mini_jsonl", spark, tmp_path_factory, mini_config("jsonl", max_bad_fraction=0.5),
        lines, "mini.jsonl",
    )  # fmt: skip
    assert summary["quarantined_by_reason"]["malformed_json"] == len(malformed)
    assert summary["quarantined_by_reason"]["bad_float"] == 1
    batch = FeatureEncoder.load(out).encode_lines(lines)
    assert_parity(out, batch, summary)


def test_java_double_string_matches_jackson_rendering():
    # What Spark's JSON reader gave for these numbers (Java 17's Double.toString).
    seen = {
        0.001: "0.001", 1e7: "1.0E7", 123456789.123: "1.23456789123E8", -0.0: "-0.0",
        2e-3: "0.002", 1e-4: "1.0E-4", 9999999.0: "9999999.0", 0.1: "0.1", 1500.0: "1500.0",
        1.7976931348623157e308: "1.7976931348623157E308", 0.30000000000000004:
        "0.30000000000000004", 3.141592653589793: "3.141592653589793", 1.0: "1.0",
    }  # fmt: skip
    assert {x: java_double_string(x) for x in seen} == seen


def test_python_encoder_matches_spark_on_parquet_records(spark, tmp_path):
    rows = [dict(zip(COLUMNS, x.split(","), strict=True)) for x in [*TRAIN, *VALID, *TEST]]
    frame = pd.DataFrame(rows).replace("", None)
    frame["cnt"] = pd.array([None if v is None else int(v) for v in frame["cnt"]], "Int64")
    frame.loc[len(frame)] = ["1", "1", "a", "d1", 3, "0.5", "oops", None, None]  # bad_float
    frame.loc[len(frame)] = ["5", "1", "a", "d1", 3, "0.5", "1", None, None]  # bad_label
    src = tmp_path / "in.parquet"
    frame.to_parquet(src)
    out = tmp_path / "out"
    cfg = mini_config("parquet", max_bad_fraction=0.5)
    summary = featurize(cfg, str(src), str(out), spark=spark)
    batch = FeatureEncoder.load(out).encode_records(pd.read_parquet(src))
    assert_parity(out, batch, summary)
    assert sorted(r for _, r in batch.quarantined) == ["bad_float", "bad_label"]
    assert batch.reasons.tolist()[-2:] == ["bad_float", "bad_label"]
    assert len(batch.reasons) == len(frame)
    # Without a label column the encoder scores rows and returns no labels.
    unlabeled = FeatureEncoder.load(out).encode_records(frame.drop(columns=["label"]).head(3))
    assert unlabeled.labels is None and len(unlabeled) == 3


def test_serving_encodes_real_output_without_spark_and_needs_success(mini, tmp_path):
    out, _, src = mini
    code = (
        "import sys\n"
        "from fm_spark.features.encoder import FeatureEncoder\n"
        f"enc = FeatureEncoder.load({str(out)!r})\n"
        f"batch = enc.encode_lines(open({str(src)!r}, 'rb').read().splitlines())\n"
        "assert 'pyspark' not in sys.modules\n"
        "print(len(batch))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(FeatureEncoder.load(out).encode_lines(mini_lines()))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    (unfinished / "_SUCCESS").unlink()
    with pytest.raises(FileNotFoundError, match="_SUCCESS"):
        FeatureEncoder.load(unfinished)
    # A vocabulary that is not the one the map was fitted with is refused (the digest Spark
    # computed at fit time is checked in Python on every load).
    (unfinished / "_SUCCESS").write_text("")
    cat = pq.read_table(unfinished / "vocab" / "cat").to_pandas()
    shutil.rmtree(unfinished / "vocab" / "cat")
    (unfinished / "vocab" / "cat").mkdir()
    cat.assign(id=cat["id"][::-1].to_numpy()).to_parquet(unfinished / "vocab" / "cat" / "p.parquet")
    with pytest.raises(ValueError, match="vocab_digest"):
        FeatureEncoder.load(unfinished)
