"""Configs validate into typed objects; mistakes name the file, the key and the expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fm_spark.config import ConfigError, config_hash, load_config

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.mark.parametrize("name", ["criteo", "avazu", "movielens"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_config(CONF / f"{name}.yaml")
    assert cfg.name == name
    for f in cfg.resolved_fields():
        if f.encoding in ("vocab", "log_bins"):
            assert f.min_count is not None
        if f.encoding == "hash":
            assert f.num_buckets is not None


def test_criteo_has_label_13_ints_26_categoricals() -> None:
    cfg = load_config(CONF / "criteo.yaml")
    assert cfg.input.columns[0] == "label" and len(cfg.input.columns) == 40
    kinds = [f.kind for f in cfg.fields]
    assert kinds.count("numeric") == 13 and kinds.count("categorical") == 26
    assert cfg.input.sep == "\t"


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal() -> dict:
    return {
        "name": "t",
        "input": {"format": "tsv", "columns": ["label", "a", "n"]},
        "fields": [
            {"name": "a", "kind": "categorical", "encoding": "vocab"},
            {"name": "n", "kind": "numeric", "encoding": "log_bins", "dtype": "int"},
        ],
    }


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    data = _minimal()
    data["encoding"] = {"min_cout": 3}
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "encoding.min_cout" in msg and "unknown key" in msg


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    data = _minimal()
    data["train"] = {"batch_size": "big"}
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    msg = str(err.value)
    assert "train.batch_size" in msg and "valid integer" in msg and "'big'" in msg


def test_encoding_must_fit_kind(tmp_path: Path) -> None:
    data = _minimal()
    data["fields"][0]["encoding"] = "quantile_bins"
    with pytest.raises(ConfigError, match="not valid for kind 'categorical'"):
        load_config(_write(tmp_path, data))


def test_source_column_must_exist(tmp_path: Path) -> None:
    data = _minimal()
    data["fields"][0]["source"] = "nope"
    with pytest.raises(ConfigError, match="source column 'nope'"):
        load_config(_write(tmp_path, data))


def test_split_fractions_must_sum_to_one(tmp_path: Path) -> None:
    data = _minimal()
    data["split"] = {"fractions": {"train": 0.8, "valid": 0.3, "test": 0.1}}
    with pytest.raises(ConfigError, match="sum to 1"):
        load_config(_write(tmp_path, data))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_are_typed_and_reach_nested_keys() -> None:
    cfg = load_config(
        CONF / "criteo.yaml",
        [
            "encoding.min_count=3",
            "train.lr=0.05",
            "split.fractions.train=0.7",
            "split.fractions.valid=0.2",
            "fields.C3.min_count=50",
            "models.ffm.embed_dim=2",
        ],
    )
    assert cfg.encoding.min_count == 3
    assert cfg.train.lr == pytest.approx(0.05)
    assert cfg.split.fractions["train"] == pytest.approx(0.7)
    by_name = {f.name: f for f in cfg.resolved_fields()}
    assert by_name["C3"].min_count == 50  # explicit per-field value wins
    assert by_name["C4"].min_count == 3  # default from the override
    assert cfg.model_params("ffm")["embed_dim"] == 2


def test_bad_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"dotted\.key=value"):
        load_config(CONF / "criteo.yaml", ["train.lr"])
    with pytest.raises(ConfigError, match="no list item named 'C99'"):
        load_config(CONF / "criteo.yaml", ["fields.C99.min_count=1"])
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(CONF / "criteo.yaml", ["train.epochs=0"])


def test_config_hash_is_stable_and_sensitive() -> None:
    a = load_config(CONF / "criteo.yaml")
    b = load_config(CONF / "criteo.yaml")
    c = load_config(CONF / "criteo.yaml", ["encoding.min_count=11"])
    sections = ("name", "input", "fields", "encoding", "split")
    assert config_hash(a, sections) == config_hash(b, sections)
    assert config_hash(a, sections) != config_hash(c, sections)
    # training settings do not change the featurization hash
    d = load_config(CONF / "criteo.yaml", ["train.lr=0.5"])
    assert config_hash(a, sections) == config_hash(d, sections)
