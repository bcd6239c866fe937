"""The synthetic log generator: the ground truth other tests grade trained models against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fm_spark import datagen
from fm_spark.datagen import BAD_KINDS, generate

ROWS = 20_000
SEED = 3
BAD_FRACTION = 0.02
N_COLUMNS = 40
INT_RE = re.compile(rb"-?[0-9]+")
TOKEN_RE = re.compile(r"[0-9a-f]{8}")


def _reasons(line: bytes, n_columns: int = N_COLUMNS, n_ints: int = 13) -> set[str]:
    """Every quarantine rule a line trips, each checked on its own (not first-match)."""
    reasons = set()
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        reasons.add("undecodable")
    # The other rules look at the line as a replacing decoder would hand it over.
    cols = line.decode("utf-8", errors="replace").encode("utf-8").split(b"\t")
    if len(cols) != n_columns:
        reasons.add("wrong_column_count")
    if cols[0] not in (b"0", b"1"):
        reasons.add("bad_label")
    if any(c and not INT_RE.fullmatch(c) for c in cols[1 : 1 + n_ints]):
        reasons.add("bad_int")
    return reasons


def _lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("gen") / "clicks.tsv"
    summary = generate("criteo", ROWS, SEED, path, bad_fraction=BAD_FRACTION)
    return path, summary


@pytest.fixture(scope="module")
def parsed(log: tuple[Path, dict]) -> dict:
    path, _ = log
    lines = _lines(path)
    reasons = [_reasons(line) for line in lines]
    good = [line.decode().split("\t") for line, r in zip(lines, reasons, strict=True) if not r]
    truth_text = path.with_name(path.name + ".truth").read_text().splitlines()
    return {
        "lines": lines,
        "reasons": reasons,
        "good": good,
        "labels": np.array([int(cols[0]) for cols in good]),
        "truth_text": truth_text,
        "truth": np.array([float(t) for t in truth_text]),
    }


def test_files_and_summary(log: tuple[Path, dict]) -> None:
    path, summary = log
    meta = json.loads(path.with_name(path.name + ".meta.json").read_text())
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "clicks.tsv",
        "clicks.tsv.meta.json",
        "clicks.tsv.truth",
    ]  # no temp files left behind
    assert {k: summary[k] for k in meta} == meta
    assert summary["output"] == str(path)
    json.dumps(summary)  # JSON-able, as the CLI prints it
    assert meta["rows"] == ROWS and meta["seed"] == SEED
    assert meta["bad_lines_total"] == round(ROWS * BAD_FRACTION)
    assert meta["total_lines"] == ROWS + meta["bad_lines_total"]


def test_deterministic(tmp_path: Path, log: tuple[Path, dict]) -> None:
    path, _ = log
    again = tmp_path / path.name
    generate("criteo", ROWS, SEED, again, bad_fraction=BAD_FRACTION)
    for suffix in ("", ".truth", ".meta.json"):
        a = path.with_name(path.name + suffix).read_bytes()
        assert a == again.with_name(again.name + suffix).read_bytes(), suffix
    other = tmp_path / "other.tsv"
    generate("criteo", ROWS, SEED + 1, other, bad_fraction=BAD_FRACTION)
    assert other.read_bytes() != path.read_bytes()


def test_good_lines_well_formed(log: tuple[Path, dict], parsed: dict) -> None:
    _, summary = log
    assert len(parsed["lines"]) == summary["total_lines"]
    assert len(parsed["good"]) == ROWS
    ints = np.array([[int(c) if c else 0 for c in cols[1:14]] for cols in parsed["good"]])
    missing_ints = np.array([[c == "" for c in cols[1:14]] for cols in parsed["good"]])
    for cols in parsed["good"][:2000]:
        assert all(c == "" or TOKEN_RE.fullmatch(c) for c in cols[14:]), cols
    assert (ints[:, 1] < 0).any()  # Criteo's I2 has small negatives
    assert (ints[:, [0, 2, 3, 4]] >= 0).all()
    assert 0.0 < missing_ints.mean() < 0.5
    assert (ints == 0).any() and ints.max() > 1000
    # Skewed values: the commonest C1 token is far above uniform over its distinct values.
    c1 = [cols[14] for cols in parsed["good"] if cols[14]]
    _, counts = np.unique(c1, return_counts=True)
    assert counts.max() > 20 * len(c1) / len(counts)


def test_each_bad_line_has_exactly_one_kind(log: tuple[Path, dict], parsed: dict) -> None:
    _, summary = log
    bad = [r for r in parsed["reasons"] if r]
    assert all(len(r) == 1 for r in bad), [r for r in bad if len(r) != 1]
    found = {kind: sum(kind in r for r in bad) for kind in BAD_KINDS}
    assert found == summary["bad_lines"]
    n_bad = summary["bad_lines_total"]
    assert all(abs(found[k] - n_bad / len(BAD_KINDS)) <= 1 for k in BAD_KINDS), found
    # Spread over the file rather than bunched at one end.
    where = np.flatnonzero([bool(r) for r in parsed["reasons"]]) / len(parsed["reasons"])
    assert where.min() < 0.1 and where.max() > 0.9


def test_bad_lines_leave_good_rows_and_truth_alone(tmp_path: Path, log: tuple[Path, dict]) -> None:
    path, _ = log
    clean = tmp_path / "clean.tsv"
    meta = generate("criteo", ROWS, SEED, clean)
    assert meta["bad_lines_total"] == 0
    good = [line for line in _lines(path) if not _reasons(line)]
    assert good == _lines(clean)
    assert (
        path.with_name(path.name + ".truth").read_bytes()
        == clean.with_name("clean.tsv.truth").read_bytes()
    )


def test_truth_is_aligned_and_metrics_match(log: tuple[Path, dict], parsed: dict) -> None:
    from sklearn.metrics import log_loss, roc_auc_score

    _, summary = log
    truth, labels = parsed["truth"], parsed["labels"]
    assert len(truth) == ROWS
    assert all(re.fullmatch(r"0\.\d{6}", t) for t in parsed["truth_text"])
    assert truth.min() > 0.0 and truth.max() < 1.0
    # Calibrated, and aligned line by line: a shifted truth would not sort the labels.
    assert abs(labels.mean() - truth.mean()) < 0.015
    high, low = truth > 0.7, truth < 0.1
    assert labels[high].mean() > 0.7 and labels[low].mean() < 0.1
    oracle = summary["oracle"]
    assert oracle["auc"] == pytest.approx(roc_auc_score(labels, truth), abs=1e-12)
    assert oracle["logloss"] == pytest.approx(log_loss(labels, truth), abs=1e-12)
    assert summary["positive_rate"] == pytest.approx(labels.mean(), abs=1e-12)
    assert 0.18 < summary["positive_rate"] < 0.32
    # Learnable, and interactions matter: the best linear model is clearly below the oracle.
    assert 0.75 < oracle["auc"] < 0.9
    assert oracle["auc"] - oracle["main_effects_auc"] > 0.02


def test_chunked_rendering_gives_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks put bad lines on chunk boundaries, at the very start and the very end.
    whole = generate("criteo", 3000, 5, tmp_path / "whole.tsv", bad_fraction=0.3)
    monkeypatch.setattr(datagen, "_RENDER_CHUNK", 7)
    generate("criteo", 3000, 5, tmp_path / "chunked.tsv", bad_fraction=0.3)
    assert (tmp_path / "whole.tsv").read_bytes() == (tmp_path / "chunked.tsv").read_bytes()
    assert len(_lines(tmp_path / "chunked.tsv")) == whole["total_lines"] == 3900


def test_planted_model_depends_on_seed_only(tmp_path: Path, log: tuple[Path, dict]) -> None:
    _, summary = log
    small = generate("criteo", 500, SEED, tmp_path / "small.tsv")
    assert small["planted_model"] == summary["planted_model"]
    model = summary["planted_model"]
    assert len(model["categorical_fields"]) == 26 and len(model["integer_fields"]) == 13
    assert len(model["interactions"]["pairs"]) >= 10


def test_oracle_auc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.3
    s = np.round(rng.random(5000) + 0.3 * y, 1)  # heavy ties
    assert datagen._oracle_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert datagen._oracle_auc(np.ones(3), np.arange(3)) is None


def test_log_bin() -> None:
    x = np.array([-2, 0, 1, 2, 3, 10, 1000])
    assert datagen.log_bin(x).tolist() == [-2, 0, 1, 2, 1, 5, 47]


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown log format 'avazu'"):
        generate("avazu", 10, 0, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="bad_fraction"):
        generate("criteo", 10, 0, tmp_path / "x.tsv", bad_fraction=1.5)
    with pytest.raises(ValueError, match="rows"):
        generate("criteo", -1, 0, tmp_path / "x.tsv")
    assert list(tmp_path.iterdir()) == []


def test_failed_run_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(micro: np.ndarray) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(datagen, "_render_truth", boom)
    with pytest.raises(OSError, match="disk full"):
        generate("criteo", 1000, 0, tmp_path / "x.tsv", bad_fraction=0.01)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fm_spark.cli import main

    out = tmp_path / "c.tsv"
    args = ["generate", "--rows", "300", "--seed", "1", "--output", str(out)]
    result = CliRunner().invoke(main, [*args, "--bad-fraction", "0.1"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["bad_lines_total"] == 30
    assert len(_lines(out)) == 330
    result = CliRunner().invoke(main, [*args, "--format", "nope"])
    assert result.exit_code != 0 and "unknown log format" in result.output


def test_context_format_matches_its_config_and_plants_interactions(tmp_path: Path) -> None:
    """``make demo``'s log: the header is conf/context.yaml's column list, every bad line is
    broken in exactly one way, and the planted interactions carry most of the signal."""
    from fm_spark.config import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "conf" / "context.yaml")
    path = tmp_path / "ctx.tsv"
    summary = generate("context", ROWS, SEED, path, bad_fraction=BAD_FRACTION)
    header, *lines = _lines(path)
    columns = cfg.input.columns
    assert header.decode().split("\t") == columns
    assert summary["columns"] == len(columns) and summary["total_lines"] == len(lines) + 1
    n_ints = sum(f.kind == "numeric" for f in cfg.fields)
    kinds: dict[str, int] = dict.fromkeys(BAD_KINDS, 0)
    good = 0
    for line in lines:
        found = _reasons(line, len(columns), n_ints)
        assert len(found) <= 1, (line, found)
        for kind in found:
            kinds[kind] += 1
        good += not found
    assert good == ROWS and kinds == summary["bad_lines"]
    oracle = summary["oracle"]
    assert oracle["auc"] - oracle["main_effects_auc"] > 0.1  # what only FM/FFM can learn
    again = tmp_path / "again.tsv"
    generate("context", ROWS, SEED, again, bad_fraction=BAD_FRACTION)
    assert again.read_bytes() == path.read_bytes()
