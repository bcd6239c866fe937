"""MovieLens-100K (RecBole's atomic files) as the click log ``conf/movielens.yaml`` reads.

The quality benchmark and the defaults sweep need one real, public, small log. RecBole ships
ml-100k as three tab-separated files (``ml-100k.inter``, ``.user``, ``.item``) with typed
headers (``user_id:token``); this joins them into one TSV with a plain header, one row per
rating, label ``1`` when the rating is 4 or 5. Genres (space-separated in RecBole's ``class``
column, e.g. ``Animation Children's Comedy``) are written ``|``-separated for the
multi-categorical field. The data itself is never part of the repository: fetch it with
``pip download --no-deps recbole==1.2.1`` and unzip ``recbole/dataset_example/ml-100k/*``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = ["COLUMNS", "MOVIELENS_ENV", "find_movielens", "prepare_movielens"]

COLUMNS = [
    "label",
    "timestamp",
    "user_id",
    "item_id",
    "age",
    "gender",
    "occupation",
    "zip_code",
    "release_year",
    "genres",
]
MOVIELENS_ENV = "FM_SPARK_ML100K"
_CANDIDATES = ("data/ml-100k", "/work/data/ml-100k")


def find_movielens(explicit: str | Path | None = None) -> Path | None:
    """The folder holding ``ml-100k.inter``: ``explicit``, ``$FM_SPARK_ML100K``, or a default."""
    for cand in (explicit, os.environ.get(MOVIELENS_ENV), *_CANDIDATES):
        if cand and (Path(cand) / "ml-100k.inter").exists():
            return Path(cand)
    return None


def _read_atomic(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    frame.columns = [c.split(":", 1)[0] for c in frame.columns]
    return frame


def prepare_movielens(src: str | Path, out: str | Path) -> dict[str, float]:
    """Write ``out`` (TSV with header, :data:`COLUMNS`) from RecBole's ml-100k files in ``src``."""
    src, out = Path(src), Path(out)
    inter = _read_atomic(src / "ml-100k.inter")
    users = _read_atomic(src / "ml-100k.user")
    items = _read_atomic(src / "ml-100k.item")
    frame = inter.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")
    frame["label"] = (frame["rating"].astype(float) >= 4).astype(int).astype(str)
    # RecBole writes the timestamp as a float column of whole seconds.
    frame["timestamp"] = frame["timestamp"].astype(float).astype("int64").astype(str)
    # One item (267) has the year "unkonwn": a missing value, not a malformed row.
    year = frame["release_year"].fillna("")
    frame["release_year"] = year.where(year.str.fullmatch(r"\d+"), "")
    frame["genres"] = frame["class"].fillna("").str.split().str.join("|")
    frame = frame.fillna("")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    frame[COLUMNS].to_csv(tmp, sep="\t", index=False, quoting=3)
    os.replace(tmp, out)
    return {"rows": len(frame), "positive_rate": float((frame["label"] == "1").mean())}
