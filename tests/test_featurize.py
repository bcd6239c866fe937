"""The Spark feature job on hand-made logs: counts, quarantine, ids, layout, atomic output."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import xxhash
import yaml
from click.testing import CliRunner
from featurize_cases import (
    BAD,
    N_FILLER,
    TEST,
    TRAIN,
    VALID,
    featurized,
    hash_id,
    id_matrix,
    mini_config,
    mini_lines,
    quarantine_records,
    row_counter,
    split_rows,
    write_lines,
)
from pyspark.sql import functions as F

from fm_spark.config import SplitSpec
from fm_spark.features import job
from fm_spark.features.feature_map import FeatureMap
from fm_spark.features.job import FeaturizeError, featurize
from fm_spark.features.quarantine import RAW
from fm_spark.features.split import SPLIT_KEY, assign, cut_points, split_key

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def mini(spark, tmp_path_factory):
    return featurized("mini", spark, tmp_path_factory, mini_config(), mini_lines(), "mini.csv")


def test_rows_in_equal_rows_written_plus_quarantined(mini):
    out, summary, _ = mini
    good = len(TRAIN) + N_FILLER + len(VALID) + len(TEST)
    assert summary["rows_read"] == good + len(BAD)  # the header line is not a row
    assert summary["rows_written"] == {"train": len(TRAIN) + N_FILLER, "valid": 3, "test": 2}
    for split, n in summary["rows_written"].items():
        assert pq.read_table(out / split).num_rows == n
    expected = Counter(reason for _, reason in BAD)
    assert summary["rows_quarantined"] == len(BAD)
    assert {k: v for k, v in summary["quarantined_by_reason"].items() if v} == expected
    assert summary["rows_read"] == sum(summary["rows_written"].values()) + len(BAD)
    assert json.loads((out / "summary.json").read_text()) == summary


def test_each_malformed_line_is_quarantined_with_its_reason(mini):
    out, _, src = mini
    records = quarantine_records(out / "quarantine")
    got = Counter((r["raw"], r["reason"]) for r in records)
    want = Counter((line.decode("utf-8", "replace"), reason) for line, reason in BAD)
    assert got == want
    by_reason = {r["reason"]: r for r in records}
    assert "\ufffd" in by_reason["undecodable"]["raw"]
    assert by_reason["bad_split_key"]["detail"] == "ts"
    assert {r["detail"] for r in records if r["reason"] == "bad_float"} == {"num", "price"}
    assert by_reason["wrong_column_count"]["detail"].startswith("expected 9 columns")
    assert all(r["source_file"].endswith(src.name) for r in records)


def _expected_rows(fmap: FeatureMap, rows: list[dict[str, int | list[int]]]) -> list[tuple]:
    """Global id tuples (column order) from per-field local ids."""
    out = []
    for row in rows:
        ids: list[int] = []
        for f in fmap.fields:
            local = row[f.name]
            ids += [f.offset + v for v in (local if isinstance(local, list) else [local])]
        out.append(tuple(ids))
    return sorted(out)


def test_vocab_unseen_rare_hash_bins_and_transforms(mini):
    """Ids worked out by hand (see featurize_cases): unseen -> 1, rare -> 2, kept -> 3 + rank."""
    out, _, _ = mini
    fmap = FeatureMap.load(out)
    fields = {f.name: f for f in fmap.fields}
    edges = fields["num"].bin_edges
    assert edges == sorted(set(edges)) and set(edges) <= {0.5, 1.5, 2.5, 3.5, 4.5, 5.5}
    nb = len(edges)

    def qbin(x: float) -> int:
        return 1 + sum(e <= x for e in edges)

    def h(token: str, field: str = "dev", buckets: int = 16) -> int:
        return hash_id(field, token, buckets)

    def th(*tokens: str) -> list[int]:  # tags_h: hashed, 2 slots, 0 = missing/padding
        return [h(t, "tags_h", 8) for t in tokens] + [0] * (2 - len(tokens))

    valid = [
        # 1,2,a,d1,5,0.1,9,x,24011800: Thursday (5) never seen in train -> unseen
        dict(cat=3, dev=h("d1"), cnt=6, num=qbin(0.1), price=1, tags=[3, 0, 0],
             hour_of_day=4, weekday=1, tags_h=th("x")),
        # 0,2,zzz,d9,999999,10,,q|x,24011900: unseen cat, bin "190" unseen, tag q unseen
        dict(cat=1, dev=h("d9"), cnt=1, num=1 + nb, price=0, tags=[1, 3, 0],
             hour_of_day=4, weekday=1, tags_h=th("q", "x")),
        # 1,2,c,,2,,,,: rare cat (count 1 < min_count 2); cnt 2 -> token "2"
        dict(cat=2, dev=0, cnt=6, num=0, price=0, tags=[0, 0, 0], hour_of_day=0, weekday=0,
             tags_h=th()),
    ]  # fmt: skip
    test = [
        # 0,3,b,d2,-3,2.5,1,y,24012000: Saturday (7) unseen
        dict(cat=4, dev=h("d2"), cnt=3, num=qbin(2.5), price=1, tags=[4, 0, 0],
             hour_of_day=4, weekday=1, tags_h=th("y")),
        dict(cat=0, dev=0, cnt=0, num=0, price=0, tags=[0, 0, 0], hour_of_day=0, weekday=0,
             tags_h=th()),
    ]  # fmt: skip
    assert sorted(map(tuple, id_matrix(out, ("valid",)).tolist())) == _expected_rows(fmap, valid)
    assert sorted(map(tuple, id_matrix(out, ("test",)).tolist())) == _expected_rows(fmap, test)
    # Train rows: a few, located through their unique cnt token.
    train = split_rows(out, "train")
    row = np.flatnonzero(train["cnt"] == fields["cnt"].offset + 7)  # cnt 100 -> "21"
    assert len(row) == 1
    i = row[0]
    assert train["cat"][i] == fields["cat"].offset + 4  # b
    assert train["dev"][i] == fields["dev"].offset + h("d3")
    assert [train[f"tags_{k}"][i] for k in range(3)] == [fields["tags"].offset] * 3  # missing
    assert [train[f"tags_{k}__value"][i] for k in range(3)] == [1.0, 0.0, 0.0]
    assert train["price__value"][i] == -1.0
    assert train["hour_of_day"][i] == fields["hour_of_day"].offset + 5  # "02"
    assert train["weekday"][i] == fields["weekday"].offset + 5  # Wednesday "4"
    # x|z|w|v keeps the first three distinct tokens: x=3 z=6 w=5, all with value 1.0
    row = np.flatnonzero(train["tags_2"] == fields["tags"].offset + 5)
    assert len(row) == 1
    assert [train[f"tags_{k}"][row[0]] - fields["tags"].offset for k in range(3)] == [3, 6, 5]
    # The vocabulary stores rare tokens too (id 2), so rare and unseen stay distinguishable.
    vocab = pq.read_table(out / fields["cat"].vocab_path).to_pydict()
    assert dict(
        zip(vocab["token"], zip(vocab["count"], vocab["id"], strict=True), strict=True)
    ) == {
        "a": (3, 3),
        "b": (2, 4),
        "c": (1, 2),
    }


def test_feature_map_describes_the_output(mini):
    out, summary, _ = mini
    fmap = FeatureMap.load(out)
    sizes = {f.name: f.size for f in fmap.fields}
    nb = len(fmap.fields[3].bin_edges)
    assert sizes == dict(cat=5, dev=17, cnt=9, num=2 + nb, price=2, tags=7, hour_of_day=7,
                         weekday=6, tags_h=9)  # fmt: skip
    offsets = np.cumsum([0, *[f.size for f in fmap.fields]])
    assert [f.offset for f in fmap.fields] == offsets[:-1].tolist()
    assert fmap.num_features == offsets[-1] == summary["num_features"]
    assert fmap.column_names == [
        "cat", "dev", "cnt", "num", "price", "tags_0", "tags_1", "tags_2", "hour_of_day",
        "weekday", "tags_h_0", "tags_h_1",
    ]  # fmt: skip
    assert [c.value_column for c in fmap.columns if c.value_column] == [
        "price__value", "tags_0__value", "tags_1__value", "tags_2__value", "tags_h_0__value",
        "tags_h_1__value",
    ]  # fmt: skip
    assert [c.field for c in fmap.columns][-2:] == ["tags_h", "tags_h"]
    assert fmap.fields[1].hash_salt == "dev:" and fmap.hash_seed == 42
    assert fmap.splits["valid"].rows == 3 and fmap.splits["valid"].positives == 2
    assert fmap.config_hash == summary["config_hash"]
    dtypes = {f.name: f.dtype for f in fmap.fields if f.dtype != "string"}
    assert dtypes == {"cnt": "int", "num": "float", "price": "float"}
    assert {f.dtype for f in fmap.fields if f.kind != "numeric"} == {"string"}
    assert fmap.input.sep == "," and fmap.label.column == "label" and fmap.split.method == "time"
    # Fingerprints: one per field, over its fitted state; the map's over layout + fields.
    assert len({f.fingerprint for f in fmap.fields}) == len(fmap.fields)
    assert all(len(f.vocab_digest) == 16 for f in fmap.fields if f.vocab_path)
    assert FeatureMap.load(out).fingerprint == fmap.fingerprint


def test_feature_map_v1_and_edited_maps_are_refused(mini, tmp_path):
    out, _, _ = mini
    data = json.loads((out / "feature_map.json").read_text())
    v1 = {**data, "schema_version": 1}
    (tmp_path / "feature_map.json").write_text(json.dumps(v1))
    with pytest.raises(ValueError, match="re-run `fm-spark featurize`"):
        FeatureMap.load(tmp_path)
    edited = json.loads(json.dumps(data))
    edited["fields"][3]["bin_edges"][0] += 1.0
    (tmp_path / "feature_map.json").write_text(json.dumps(edited))
    with pytest.raises(ValueError, match="fingerprint"):
        FeatureMap.load(tmp_path)
    # A changed fitted state changes both fingerprints; moving nothing changes nothing.
    fmap = FeatureMap.load(out)
    fields = list(fmap.fields)
    fields[3] = fields[3].model_copy(update={"bin_edges": [0.0], "fingerprint": ""})
    fields[3] = type(fields[3]).model_validate(fields[3].model_dump())
    changed = fmap.model_copy(update={"fields": fields})
    assert changed.fields[3].fingerprint != fmap.fields[3].fingerprint
    assert changed.fingerprint != fmap.fingerprint
    assert FeatureMap.synthetic([3, 4]).fingerprint == FeatureMap.synthetic([3, 4]).fingerprint


def test_output_layout(mini):
    out, _, _ = mini
    fmap = FeatureMap.load(out)
    assert (out / "_SUCCESS").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left
    for split in SPLITS:
        schema = pq.read_schema(next((out / split).glob("*.parquet")))
        values = [c.value_column for c in fmap.columns if c.value_column]
        assert schema.names == ["label", *fmap.column_names, *values]
        assert str(schema.field("label").type) == "float"
        assert {str(schema.field(c).type) for c in fmap.column_names} == {"int32"}
        assert {str(schema.field(c).type) for c in values} == {"float"}
        ids = id_matrix(out, (split,))
        assert ids.min() >= 0 and ids.max() < fmap.num_features
    # 607 train rows, row_group_rows=100, rows_per_file=250: several files and row groups.
    files = sorted((out / "train").glob("*.parquet"))
    metas = [pq.read_metadata(f) for f in files]
    assert len(files) >= 3 and all(m.num_rows <= 250 for m in metas)
    assert sum(m.num_row_groups for m in metas) >= 5


def test_same_input_and_config_give_same_ids_and_feature_map(spark, mini, tmp_path):
    out, _, src = mini
    again = tmp_path / "again"
    featurize(mini_config(), str(src), str(again), spark=spark)
    assert (again / "feature_map.json").read_bytes() == (out / "feature_map.json").read_bytes()
    for split in SPLITS:
        assert row_counter(id_matrix(again, (split,))) == row_counter(id_matrix(out, (split,)))
    for field in ("cat", "cnt", "tags"):
        a = pq.read_table(again / "vocab" / field).sort_by("token")
        b = pq.read_table(out / "vocab" / field).sort_by("token")
        assert a.equals(b)


# --------------------------------------------------------------------------------------------
# atomic output


def test_killed_run_leaves_nothing_and_rerun_works(spark, tmp_path, monkeypatch):
    src = write_lines(tmp_path / "in.csv", mini_lines())
    out = tmp_path / "out"
    real_write = job._write_splits

    def write_then_die(*args, **kwargs):
        real_write(*args, **kwargs)  # the splits exist in staging when the job "dies"
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(job, "_write_splits", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        featurize(mini_config(), str(src), str(out), spark=spark)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # staging cleaned
    monkeypatch.undo()

    # A hard kill (no chance to clean) leaves a hidden staging sibling; the next run drops it.
    stale = tmp_path / ".out.staging-deadbeef"
    (stale / "train").mkdir(parents=True)
    (stale / "train" / "part-0.parquet").write_bytes(b"half written")
    summary = featurize(mini_config(), str(src), str(out), spark=spark)
    assert not stale.exists()
    assert (out / "_SUCCESS").exists() and summary["status"] == "ok"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out"]


def test_existing_output_is_refused_unless_overwrite(spark, mini, tmp_path):
    """A finished dataset is replaced only with --overwrite (a folder that is not a dataset
    never is: tests/test_publish.py)."""
    _, _, src = mini
    out = tmp_path / "out"
    featurize(mini_config(), str(src), str(out), spark=spark)
    before = (out / "feature_map.json").read_bytes()
    with pytest.raises(FeaturizeError, match="finished dataset; pass --overwrite"):
        featurize(mini_config(), str(src), str(out), spark=spark)
    assert (out / "feature_map.json").read_bytes() == before

    # Through the CLI: --overwrite replaces it, the summary is the one JSON line on stdout.
    cfg_file = tmp_path / "mini.yaml"
    cfg_file.write_text(yaml.safe_dump(mini_config().model_dump(mode="json")))
    from fm_spark.cli import main

    args = ["featurize", "--config", str(cfg_file), "--input", str(src), "--output", str(out)]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    result = CliRunner().invoke(main, [*args, "--overwrite", "--set", "fields.cat.min_count=1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["status"] == "ok" and summary["output"].endswith("/out")
    assert (out / "_SUCCESS").exists()
    cat = FeatureMap.load(out).fields[0]
    assert cat.name == "cat" and cat.size == 6  # a, b and now c kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mini.yaml", "out"]


def test_too_many_bad_rows_fails_after_writing_the_quarantine(spark, mini, tmp_path):
    _, _, src = mini
    out = tmp_path / "out"
    failed = Path(f"{out}.failed")
    failed.mkdir()
    (failed / "from_an_older_run").write_text("")
    (failed / "_FAILED").write_text("an older job\n")  # what marks it as made by a failed run
    with pytest.raises(FeaturizeError) as err:
        featurize(mini_config(max_bad_fraction=0.01), str(src), str(out), spark=spark)
    message = str(err.value)
    assert str(failed) in message and "0.01" in message and "0.022" in message
    assert "--set max_bad_fraction=" in message
    assert not out.exists()
    assert not (failed / "from_an_older_run").exists()
    assert len(quarantine_records(failed / "quarantine")) == len(BAD)
    summary = json.loads((failed / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rows_quarantined"] == len(BAD)
    assert not (failed / "_SUCCESS").exists()


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FeaturizeError, match="cannot read input"):
        featurize(mini_config(), str(tmp_path / "nope*.csv"), str(tmp_path / "out"), spark=spark)
    assert sorted(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# splits


def test_hash_split_follows_the_documented_formula(spark):
    lines = [f"line {i}\twith\ttabs" for i in range(3000)]
    spec = SplitSpec(method="hash", seed=7)
    df = spark.createDataFrame([(x,) for x in lines], f"{RAW} string")
    keyed = df.withColumn(SPLIT_KEY, split_key(spec))
    got = dict(keyed.select(RAW, assign(F.col(SPLIT_KEY), cut_points(spec, keyed))).collect())

    def expected(line: str) -> str:
        v = xxhash.xxh64_intdigest(f"7:{line}".encode(), seed=42)
        u = ((v - 2**64 if v >= 2**63 else v) % 1_000_000) / 1_000_000
        return "train" if u < 0.8 else "valid" if u < 0.9 else "test"

    assert got == {x: expected(x) for x in lines}
    counts = Counter(got.values())
    assert 2200 < counts["train"] < 2600 and counts["valid"] > 200 and counts["test"] > 200


def test_time_split_by_fractions_keeps_equal_timestamps_together(spark):
    spec = SplitSpec(
        method="time", column="ts", fractions={"train": 0.8, "valid": 0.1, "test": 0.1}
    )
    # ts 1..10, ten rows each: train <= 8, valid 9, test 10.
    df = spark.createDataFrame([(float(1 + i % 10),) for i in range(100)], f"{SPLIT_KEY} double")
    rows = df.select(SPLIT_KEY, assign(F.col(SPLIT_KEY), cut_points(spec, df)).alias("s"))
    got = {r[SPLIT_KEY]: r["s"] for r in rows.distinct().collect()}
    assert got == {**{float(t): "train" for t in range(1, 9)}, 9.0: "valid", 10.0: "test"}
    # One timestamp holding most rows stays whole, in train.
    skewed = spark.createDataFrame([(1.0,)] * 95 + [(2.0,)] * 5, f"{SPLIT_KEY} double")
    rows = skewed.select(assign(F.col(SPLIT_KEY), cut_points(spec, skewed)).alias("s"))
    assert Counter(r["s"] for r in rows.collect()) == {"train": 95, "test": 5}
