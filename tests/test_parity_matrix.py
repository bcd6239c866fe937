"""Every encoding x every input format: Spark ids == serving ids, 100 %.

Driven by the registry: one field per (encoding, kind) it accepts, plus the transforms, all in
one config; one featurize per input format on generated rows with rare, unseen, missing,
negative and non-ASCII values (and, for CSV, quoted separators and doubled quotes). The
serving encoder then encodes the same input and both outputs are compared as multisets of
rows, and field by field so a failure names the encoding.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fm_spark.config import parse_config
from fm_spark.features.encoder import FeatureEncoder
from fm_spark.features.encodings import ENCODINGS, all_params
from fm_spark.features.encodings.modifiers import TRANSFORMS
from fm_spark.features.feature_map import FeatureMap
from fm_spark.features.job import featurize
from fm_spark.features.spec import MISSING_ID, RARE_ID, UNSEEN_ID

FORMATS = ("tsv", "csv", "jsonl", "parquet")
SPLITS = ("train", "valid", "test")
N_ROWS = 900
# A small value for every param in the registry: a new param must get one here.
SMALL = {"min_count": 2, "num_buckets": 16, "num_bins": 4, "max_values": 3, "separator": "|"}
DTYPES = {"log_bins": "int", "quantile_bins": "float", "value": "float"}


def _fields() -> list[dict]:
    assert set(all_params()) <= set(SMALL), "give the new param a small test value in SMALL"
    fields = []
    for name, cls in ENCODINGS.items():
        for kind in cls.kinds:
            f = {"name": f"{name}__{kind}", "source": f"src_{kind}", "kind": kind}
            f |= {"encoding": name, **{p.name: SMALL[p.name] for p in cls.params_for(kind)}}
            if kind == "numeric":
                f["source"] = f"src_{DTYPES.get(name, 'float')}"
                f["dtype"] = DTYPES.get(name, "float")
            fields.append(f)
    # Transforms modify a token encoding's input: one field each, alternating encodings.
    token_encodings = [n for n, c in ENCODINGS.items() if "categorical" in c.kinds]
    for i, t in enumerate(t for t in TRANSFORMS if t != "none"):
        enc = token_encodings[i % len(token_encodings)]
        cls = ENCODINGS[enc]
        fields.append(
            {"name": f"{enc}__{t}", "source": "src_hour", "kind": "categorical", "encoding": enc,
             "transform": t, **{p.name: SMALL[p.name] for p in cls.params_for("categorical")}}
        )  # fmt: skip
    return fields


COLUMNS = ["label", "src_categorical", "src_multi_categorical", "src_int", "src_float", "src_hour"]
FIELDS = _fields()


def _config(fmt: str):
    return parse_config(
        {
            "name": "matrix",
            "input": {"format": fmt, "columns": COLUMNS, "header": fmt == "csv"},
            "fields": FIELDS,
            "output": {"row_group_rows": 200, "rows_per_file": 400},
            "max_bad_fraction": 0.2,
        },
        "matrix",
    )


def _rows(seed: int = 7) -> list[dict[str, str | None]]:
    """Raw rows as strings (None = missing)."""
    rng = np.random.default_rng(seed)
    common = ["a", "b", "café", "日本", "x,y", 'say "hi"', "🎉", "-", "a b"]

    def token() -> str | None:
        u = rng.random()
        if u < 0.1:
            return None
        if u < 0.75:
            return common[min(int(rng.zipf(1.5)) - 1, len(common) - 1)]
        return f"r{rng.integers(0, 400)}"  # rare, and in valid/test often unseen

    def ints() -> str | None:
        u = rng.random()
        if u < 0.1:
            return None
        v = int(np.floor(np.exp(rng.normal(2, 2)))) * (-1 if u < 0.2 else 1)
        return str(v) if u < 0.9 else f"+{abs(v)}"

    def floats() -> str | None:
        u = rng.random()
        if u < 0.1:
            return None
        x = rng.normal(0, 100)
        return [f"{x:.3f}", f"{x:.2e}", f"{x:.0f}", f".{abs(int(x))}"][int(rng.integers(0, 4))]

    def multi() -> str | None:
        if rng.random() < 0.1:
            return None
        toks = [t or "" for t in (token() for _ in range(int(rng.integers(0, 5))))]
        return "|".join(toks)

    def hour() -> str | None:
        u = rng.random()
        if u < 0.1:
            return None
        if u < 0.15:
            return "2401x100"  # unreadable: missing after the transform
        return f"24{rng.integers(1, 14):02d}{rng.integers(1, 32):02d}{rng.integers(0, 24):02d}"

    return [
        {"label": str(int(rng.random() < 0.3)), "src_categorical": token(),
         "src_multi_categorical": multi(), "src_int": ints(), "src_float": floats(),
         "src_hour": hour()}
        for _ in range(N_ROWS)
    ]  # fmt: skip


# Bad lines per text format: (line, reason), quarantined by both executors.
BAD_LINES = {
    "tsv": [("1\ta\tb", "wrong_column_count"), ("7\ta\t\t1\t2\t", "bad_label")],
    "csv": [
        ('1,"unclosed,x,1,2,24010100', "malformed_csv"),
        ('1,a "b",x,1,2,24010100', "malformed_csv"),
        ('1,"a"b,x,1,2,24010100', "malformed_csv"),
        ('1,"a,b",x,1', "wrong_column_count"),
        ('1,"x,y",,1.5,2,', "bad_int"),
    ],
    "jsonl": [
        ("{not json", "malformed_json"),
        ('{"label": "1", "src_float": "1e999"}', "bad_float"),
    ],
}


def _write(fmt: str, rows: list[dict], path: Path) -> Path:
    if fmt == "parquet":
        pd.DataFrame(rows, columns=COLUMNS).to_parquet(path)
        return path
    if fmt == "jsonl":
        lines = []
        for r in rows:
            obj = {k: v for k, v in r.items() if v is not None}
            if obj.get("src_int") is not None and not obj["src_int"].startswith("+"):
                obj["src_int"] = int(obj["src_int"])  # a JSON number, rendered back as text
            lines.append(json.dumps(obj, ensure_ascii=bool(len(lines) % 2)))
    elif fmt == "csv":
        buf = io.StringIO()
        minimal = csv.writer(buf, lineterminator="\n")
        quote_all = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        minimal.writerow(COLUMNS)
        for i, r in enumerate(rows):
            writer = quote_all if i % 7 == 0 else minimal  # quoting when not needed, too
            writer.writerow(["" if r[c] is None else r[c] for c in COLUMNS])
        lines = buf.getvalue().splitlines()
    else:
        lines = [
            "\t".join("" if r[c] is None else r[c].replace("\t", " ") for c in COLUMNS)
            for r in rows
        ]
    lines += [line for line, _ in BAD_LINES.get(fmt, [])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _spark_rows(out: Path, fmap: FeatureMap) -> np.ndarray:
    """[rows, 1 + 2 * columns]: label, ids, values (1.0 without a value column)."""
    blocks = []
    for split in SPLITS:
        t = pq.read_table(out / split)
        ones = np.ones(t.num_rows)
        cols = [t.column("label").to_numpy().astype(np.float64)]
        cols += [t.column(c).to_numpy().astype(np.float64) for c in fmap.column_names]
        cols += [t.column(v).to_numpy() if v else ones for v in fmap.value_columns]
        blocks.append(np.stack(cols, axis=1))
    return np.concatenate(blocks)


@pytest.fixture(scope="module", params=FORMATS)
def matrix(request, spark, tmp_path_factory):
    fmt = request.param
    root = tmp_path_factory.mktemp(f"matrix_{fmt}")
    src = _write(fmt, _rows(), root / f"in.{fmt}")
    out = root / "out"
    summary = featurize(_config(fmt), str(src), str(out), spark=spark)
    encoder = FeatureEncoder.load(out)
    if fmt == "parquet":
        batch = encoder.encode_records(pd.read_parquet(src))
    else:
        batch = encoder.encode_lines(src.read_bytes().splitlines())
    fmap = FeatureMap.load(out)
    served = np.concatenate(
        [batch.labels[:, None].astype(np.float64), batch.ids, batch.values], axis=1
    )
    return fmt, summary, fmap, _spark_rows(out, fmap), served, batch


def _counter(matrix: np.ndarray, cols: list[int]) -> Counter:
    return Counter(map(tuple, matrix[:, cols].tolist()))


def test_every_row_is_the_same(matrix):
    fmt, summary, _, spark_side, served, batch = matrix
    assert len(served) == len(spark_side) > N_ROWS * 0.9
    assert _counter(served, list(range(served.shape[1]))) == _counter(
        spark_side, list(range(spark_side.shape[1]))
    )
    spark_reasons = {k: v for k, v in summary["quarantined_by_reason"].items() if v}
    assert Counter(r for _, r in batch.quarantined) == spark_reasons
    assert spark_reasons == Counter(r for _, r in BAD_LINES.get(fmt, []))


@pytest.mark.parametrize("field", [f["name"] for f in FIELDS])
def test_every_encoding_in_every_format(matrix, field):
    _, _, fmap, spark_side, served, _ = matrix
    n = fmap.num_columns
    cols = [i for i, c in enumerate(fmap.columns) if c.field == field]
    picked = [1 + i for i in cols] + [1 + n + i for i in cols]
    assert _counter(served, picked) == _counter(spark_side, picked)
    # The data exercises the id layout: missing always; rare and unseen for vocabularies.
    info = next(f for f in fmap.fields if f.name == field)
    local = set((served[:, [1 + i for i in cols]] - info.offset).astype(int).ravel().tolist())
    assert MISSING_ID in local and len(local) >= 2
    if info.vocab_path is not None and info.kind != "numeric" and info.transform == "none":
        assert {UNSEEN_ID, RARE_ID} <= local
