"""The registry of encodings: it drives the config, the README table, and serving needs no
Spark."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fm_spark.features.encodings as encodings_pkg
from fm_spark.config import ConfigError, EncodingDefaults, FieldSpec, parse_config
from fm_spark.features.encodings import ENCODINGS, all_params, encodings_table

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- encodings:begin -->", "<!-- encodings:end -->"


def test_readme_table_of_encodings_is_the_registry_s():
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "README lost its encodings table markers"
    table = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert table == encodings_table(), (
        "README's table of encodings is stale: paste the output of "
        "`python -c 'from fm_spark.features.encodings import encodings_table as t; print(t())'`"
    )
    for name in ENCODINGS:
        assert f"`{name}`" in table


def test_config_models_are_generated_from_the_params():
    params = all_params()
    assert set(FieldSpec.model_fields) >= set(params)
    shared = {n for n, p in params.items() if p.shared}
    assert set(EncodingDefaults.model_fields) == shared
    assert EncodingDefaults().num_buckets == params["num_buckets"].default


def _cfg(field: dict) -> dict:
    return {
        "name": "t",
        "input": {"format": "tsv", "columns": ["label", "a"]},
        "fields": [{"name": "a", **field}],
    }


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"kind": "categorical", "encoding": "vocab", "num_bins": 3}, "`num_bins` does not apply"),
        ({"kind": "categorical", "encoding": "hash", "max_values": 3}, "multi_categorical"),
        ({"kind": "numeric", "encoding": "vocab"}, "not valid for kind 'numeric'"),
        ({"kind": "categorical", "encoding": "bloom"}, "unknown encoding 'bloom'"),
        ({"kind": "categorical", "encoding": "hash", "num_buckets": 0}, "greater than 0"),
        ({"kind": "multi_categorical", "encoding": "vocab"}, "needs a `separator`"),
    ],
)
def test_field_params_are_checked_against_their_encoding(field, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_cfg(field))


def test_params_resolve_from_defaults_then_own_values():
    cfg = parse_config(
        {
            **_cfg({"kind": "multi_categorical", "encoding": "hash", "separator": "|"}),
            "encoding": {"num_buckets": 64},
        }
    )
    (fdef,) = cfg.field_defs()
    assert dict(fdef.params) == {"num_buckets": 64, "separator": "|", "max_values": 8}
    assert fdef.column_names == [f"a_{k}" for k in range(8)]


def test_serving_imports_no_spark():
    """A fresh interpreter: the serving encoder, every encoding module and the models."""
    modules = [
        "fm_spark.features.encoder",
        "fm_spark.features.spec",
        "fm_spark.features.feature_map",
        "fm_spark.models",
        "fm_spark.registry.scorer",
        "fm_spark.registry.pyfunc",
        *[
            m.name
            for m in pkgutil.walk_packages(encodings_pkg.__path__, "fm_spark.features.encodings.")
        ],
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "    assert 'pyspark' not in sys.modules, m\n"
        "print('ok', len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")
    assert len(modules) >= 4 + len(ENCODINGS)
