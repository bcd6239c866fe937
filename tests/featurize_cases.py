"""Hand-made logs with known ids for the feature-job tests, and a cache of featurized outputs.

The "mini" dataset covers every encoding, transform and quarantine reason with a few lines
whose ids can be worked out by hand (see the comments), plus filler rows with every feature
missing: they give the train split enough rows for several row groups and files without
changing any vocabulary.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import xxhash

from fm_spark.config import DatasetConfig, parse_config
from fm_spark.features.feature_map import FeatureMap

COLUMNS = ["label", "ts", "cat", "dev", "cnt", "num", "price", "tags", "hour"]
HEADER = ",".join(COLUMNS)


def mini_config(fmt: str = "csv", **top: Any) -> DatasetConfig:
    data: dict[str, Any] = {
        "name": "mini",
        "input": {"format": fmt, "header": fmt == "csv", "columns": COLUMNS},
        "fields": [
            {"name": "cat", "kind": "categorical", "encoding": "vocab", "min_count": 2},
            {"name": "dev", "kind": "categorical", "encoding": "hash", "num_buckets": 16},
            {"name": "cnt", "kind": "numeric", "dtype": "int", "encoding": "log_bins",
             "min_count": 1},
            {"name": "num", "kind": "numeric", "encoding": "quantile_bins", "num_bins": 4},
            {"name": "price", "kind": "numeric", "encoding": "value"},
            {"name": "tags", "kind": "multi_categorical", "encoding": "vocab", "separator": "|",
             "max_values": 3, "min_count": 1},
            {"name": "hour_of_day", "source": "hour", "kind": "categorical", "encoding": "vocab",
             "transform": "yymmddhh_hour", "min_count": 1},
            {"name": "weekday", "source": "hour", "kind": "categorical", "encoding": "vocab",
             "transform": "yymmddhh_weekday", "min_count": 1},
            {"name": "tags_h", "source": "tags", "kind": "multi_categorical", "encoding": "hash",
             "num_buckets": 8, "separator": "|", "max_values": 2},
        ],
        "split": {"method": "time", "column": "ts", "cutoffs": {"valid": "2", "test": "3"}},
        "output": {"row_group_rows": 100, "rows_per_file": 250},
        "max_bad_fraction": 0.05,
    }  # fmt: skip
    data.update(top)
    return parse_config(data, "mini")


# Train (ts=1). Vocabularies: cat a=3 b=4, c rare (count 1 < 2); tags x=3 y=4 w=5 z=6
# (count desc, token asc); cnt tokens "-3"=3 "0"=4 "1"=5 "2"=6 "21"=7 "3"=8 (5 -> "2",
# 100 -> "21", 7 -> "3"); hour_of_day "01"=3 "00"=4 "02"=5 "12"=6; weekday (2024-01-15 is a
# Monday = 2) "2"=3 "3"=4 "4"=5.
TRAIN = [
    "1,1,a,d1,0,0.5,1.5,x|y,24011500",
    "0,1,a,d2,1,1.5,2.5,y|x|y,24011501",
    "1,1,a,d1,5,2.5,,x|z|w|v,24011601",  # tags: v is past max_values=3, dropped
    "0,1,b,d3,100,3.5,-1,,24011702",
    "0,1,b,,-3,4.5,0,||y||,2401170x",  # hour not 8 digits: both transforms missing
    "1,1,c,d4,,5.5,3.25,w,24133112",  # month 13: hour "12" but weekday missing
    "0,1,,d5,7,,,z,",
]
FILLER = "0,1,,,,,,,"  # every feature missing
N_FILLER = 600
VALID = [
    "1,2,a,d1,5,0.1,9,x,24011800",
    "0,2,zzz,d9,999999,10,,q|x,24011900",  # unseen cat, tag q, cnt bin 190; Friday unseen
    "1,2,c,,2,,,,",  # rare cat; cnt 2 -> "2" (seen)
]
TEST = [
    "0,3,b,d2,-3,2.5,1,y,24012000",
    "1,3,,,,,,,",
]
# (line, reason): the first failing rule names the reason.
BAD: list[tuple[bytes, str]] = [
    (b"1,1,a,d1,0,0.5,1.5,x", "wrong_column_count"),
    (b"1,1,a,d1,0,0.5,1.5,x,24011500,extra", "wrong_column_count"),
    (b"2,1,a,d1,0,0.5,1.5,x,24011500", "bad_label"),
    (b",1,a,d1,0,0.5,1.5,x,24011500", "bad_label"),
    (b"3,1,a,d1,x7,zz,1.5,x,24011500", "bad_label"),  # label before numbers
    (b"1,1,a,d1,3.5,0.5,1.5,x,24011500", "bad_int"),
    (b"1,1,a,d1,1e3,0.5,1.5,x,24011500", "bad_int"),
    (b"1,1,a,d1,99999999999999999999,0.5,1.5,x,24011500", "bad_int"),  # > int64
    (b"1,1,a,d1,x7,zz,1.5,x,24011500", "bad_int"),  # int fields before float fields
    (b"1,1,a,d1,3,abc,1.5,x,24011500", "bad_float"),
    (b"1,1,a,d1,3,0.5,inf,x,24011500", "bad_float"),
    (b"1,1,a,d1,3,0.5,1e999,x,24011500", "bad_float"),  # not finite
    (b"1,1,a\xff\xfe,d1,3,0.5,1.5,x,24011500", "undecodable"),
    (b"1,,a,d1,3,0.5,1.5,x,24011500", "bad_split_key"),
]


def mini_lines() -> list[bytes]:
    good = [*TRAIN, *[FILLER] * N_FILLER, *VALID, *TEST]
    lines = [HEADER.encode()] + [g.encode() for g in good] + [b for b, _ in BAD]
    # Interleave bad lines so they do not all sit at the end of one partition.
    return lines[:5] + lines[-len(BAD) :] + lines[5 : -len(BAD)]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def hash_id(field: str, token: str, buckets: int) -> int:
    """The documented hash encoding, independently of the encoder under test."""
    v = xxhash.xxh64_intdigest(f"{field}:{token}".encode(), seed=42)
    signed = v - 2**64 if v >= 2**63 else v
    return 1 + signed % buckets


# --------------------------------------------------------------------------------------------
# reading outputs


def split_rows(out: Path, split: str) -> dict[str, np.ndarray]:
    table = pq.read_table(out / split)
    return {c: table.column(c).to_numpy() for c in table.column_names}


def id_matrix(out: Path, splits: tuple[str, ...] = ("train", "valid", "test")) -> np.ndarray:
    """All id columns (in feature-map column order) of the given splits, stacked."""
    fmap = FeatureMap.load(out)
    blocks = []
    for s in splits:
        t = pq.read_table(out / s)
        blocks.append(np.stack([t.column(c).to_numpy() for c in fmap.column_names], axis=1))
    return np.concatenate(blocks)


def row_counter(matrix: np.ndarray) -> Counter:
    return Counter(map(tuple, np.asarray(matrix).tolist()))


def quarantine_records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for f in sorted(directory.glob("part-*")):
        out += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
    return out


# --------------------------------------------------------------------------------------------
# one featurize run per dataset per test session

_RUNS: dict[str, tuple[Path, dict[str, Any]]] = {}


def featurized(
    key: str, spark, tmp_path_factory, cfg: DatasetConfig, lines: list[bytes], name: str
) -> tuple[Path, dict[str, Any], Path]:
    """Featurize ``lines`` once per session (shared by test modules); returns (output dir,
    summary, input file). Callers must not modify the output."""
    from fm_spark.features.job import featurize

    if key not in _RUNS:
        root = tmp_path_factory.mktemp(key)
        src = write_lines(root / "input" / name, lines)
        out = root / "out"
        summary = featurize(cfg, str(src), str(out), spark=spark)
        _RUNS[key] = (out, summary, src)
    return _RUNS[key]
