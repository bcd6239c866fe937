"""The registry of encodings: one class per encoding, one entry here.

It drives the config (``FieldSpec``'s params and ``encoding:`` defaults are generated from the
classes' :class:`~.base.Param` s), the Spark feature job (:mod:`fm_spark.features.featurizer`),
the serving encoder (:mod:`fm_spark.features.encoder`) and the README's table of encodings
(:func:`encodings_table`, checked by a test). Adding an encoding = one module + one entry in
:data:`ENCODINGS`. Nothing here imports pyspark.
"""

from __future__ import annotations

from fm_spark.features.encodings.base import Encoding, FieldDef, FieldInput, FitContext, Param
from fm_spark.features.encodings.hash import Hash
from fm_spark.features.encodings.log_bins import LogBins
from fm_spark.features.encodings.modifiers import MULTI_PARAMS, TRANSFORMS
from fm_spark.features.encodings.quantile_bins import QuantileBins
from fm_spark.features.encodings.value import Value
from fm_spark.features.encodings.vocab import Vocab

__all__ = [
    "ENCODINGS",
    "Encoding",
    "FieldDef",
    "FieldInput",
    "FitContext",
    "Param",
    "all_params",
    "encoding_class",
    "encodings_table",
]

ENCODINGS: dict[str, type[Encoding]] = {
    cls.name: cls for cls in (Vocab, Hash, LogBins, QuantileBins, Value)
}


def encoding_class(name: str) -> type[Encoding]:
    try:
        return ENCODINGS[name]
    except KeyError:
        raise ValueError(f"unknown encoding {name!r} (known: {', '.join(ENCODINGS)})") from None


def all_params() -> dict[str, Param]:
    """Every param of every encoding and modifier, by name (a name means one thing)."""
    out: dict[str, Param] = {}
    for p in [*(p for cls in ENCODINGS.values() for p in cls.params), *MULTI_PARAMS]:
        if out.setdefault(p.name, p) != p:
            raise TypeError(f"param {p.name!r} is declared twice with different meanings")
    return out


def encodings_table() -> str:
    """The README's table of encodings and their params, generated from the registry."""
    rows = [
        "| encoding | kinds | what it does | local ids | params (default) |",
        "|---|---|---|---|---|",
    ]
    for cls in ENCODINGS.values():
        params = ", ".join(_param_text(p) for p in cls.params) or "none"
        kinds = ", ".join(cls.kinds)
        rows.append(f"| `{cls.name}` | {kinds} | {cls.summary} | {cls.ids} | {params} |")
    rows.append("")
    rows.append(
        "Modifiers: `kind: multi_categorical` (token encodings) takes "
        + ", ".join(_param_text(p) for p in MULTI_PARAMS)
        + "; `transform`: "
        + "; ".join(f"`{k}` {v}" for k, v in TRANSFORMS.items())
        + ". Defaults marked `encoding:` come from the config's `encoding:` section."
    )
    return "\n".join(rows)


def _param_text(p: Param) -> str:
    where = "`encoding:` " if p.shared else ""
    default = f" ({where}{p.default})" if p.default is not None else " (required)"
    return f"`{p.name}`{default}: {p.doc}"
