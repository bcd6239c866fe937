"""Guard rails on the data (fm_spark.features.guards): a one-class or empty split fails the job,
the bad-fraction failure says what to fix, duplicate input columns are a config error."""

from __future__ import annotations

import re

import pytest
from featurize_cases import mini_config, write_lines

from fm_spark.config import ConfigError, parse_config
from fm_spark.features.job import FeaturizeError, featurize


def _config(**top):
    data = {
        "name": "tiny",
        "input": {"format": "csv", "columns": ["label", "ts", "c1"]},
        "fields": [{"name": "c1", "kind": "categorical", "encoding": "vocab", "min_count": 1}],
        "split": {"method": "hash", "seed": 3},
        **top,
    }
    return parse_config(data, "tiny")


def _lines(n: int = 400, positive: str = "1") -> list[str]:
    # Every 4th row is a click; the label is written as ``positive``.
    return [f"{positive if i % 4 == 0 else '0'},{i // 10},v{i % 7}".encode() for i in range(n)]


def test_labels_that_never_match_fail_with_the_config_to_fix(spark, tmp_path):
    """Clicks written " 1": the failure names bad_label, shows lines, points at label.positive."""
    src = write_lines(tmp_path / "in.csv", _lines(positive=" 1"))
    with pytest.raises(FeaturizeError) as err:
        featurize(_config(), str(src), str(tmp_path / "out"), spark=spark)
    message = str(err.value)
    assert "100 of 400 rows were quarantined" in message
    assert "bad_label: 100 rows" in message and "label.positive ['1']" in message
    samples = re.findall(r"^ +' 1,\d+,v\d'  \(label\)$", message, re.M)  # quoted: the space shows
    assert len(samples) == 3
    assert "--set max_bad_fraction=" in message  # still offered, but after the fix
    assert message.index("label.positive") < message.index("max_bad_fraction=<")
    assert not (tmp_path / "out").exists()


def test_a_split_with_one_class_fails_the_job(spark, tmp_path):
    """Following the old advice (accept the bad rows) left no positives: now that fails."""
    src = write_lines(tmp_path / "in.csv", _lines(positive=" 1"))
    with pytest.raises(FeaturizeError) as err:
        featurize(_config(max_bad_fraction=0.3), str(src), str(tmp_path / "out"), spark=spark)
    message = str(err.value)
    assert "split holds only negative rows" in message
    assert "label.positive ['1']" in message and "'label'" in message
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]  # no staging, no lease


def test_an_empty_split_fails_the_job_unless_configured_empty(spark, tmp_path):
    src = write_lines(tmp_path / "in.csv", _lines())
    late = {"method": "time", "column": "ts", "cutoffs": {"valid": "30", "test": "99"}}
    with pytest.raises(FeaturizeError, match="the test split is empty") as err:
        featurize(_config(split=late), str(src), str(tmp_path / "out"), spark=spark)
    assert "split.cutoffs" in str(err.value) and "as strings" in str(err.value)
    assert not (tmp_path / "out").exists()

    no_test = {"method": "hash", "fractions": {"train": 0.8, "valid": 0.2, "test": 0.0}}
    summary = featurize(_config(split=no_test), str(src), str(tmp_path / "out"), spark=spark)
    assert summary["rows_written"]["test"] == 0 and summary["rows_written"]["valid"] > 0


def test_duplicate_input_columns_are_a_config_error():
    data = mini_config().model_dump(mode="json")
    data["input"]["columns"][3] = "cat"  # "dev" renamed to a name already taken
    with pytest.raises(ConfigError, match=r"input.columns: .*duplicate column names \['cat'\]"):
        parse_config(data, "mini.yaml")
