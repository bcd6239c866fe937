"""Configuration as data: one YAML per dataset in ``conf/``, validated into typed objects.

Every job reads the same :class:`DatasetConfig`; the feature job uses ``input``, ``label``,
``fields``, ``split`` and ``output``; training uses ``train`` and ``models``. Any value can be
overridden from the command line with ``--set dotted.key=value`` (the value is parsed as YAML,
so ``--set train.epochs=3`` gives an int and ``--set split.fractions.train=0.7`` a float).

Validation errors name the file, the key and what was expected, because a config is usually
edited by someone who did not write this code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from fm_spark.features.encodings import ENCODINGS, FieldDef, Param, all_params
from fm_spark.features.encodings.modifiers import MULTI_PARAMS, TRANSFORMS

__all__ = [
    "ConfigError",
    "DatasetConfig",
    "FieldSpec",
    "InputSpec",
    "SplitSpec",
    "TrainSpec",
    "apply_overrides",
    "config_hash",
    "load_config",
]


class ConfigError(ValueError):
    """A config file or override that does not validate; the message is meant for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


PositiveInt = Annotated[int, Field(gt=0)]


class InputSpec(_Strict):
    """How raw lines are read. Text formats keep the raw line so bad ones can be quarantined."""

    format: Literal["tsv", "csv", "jsonl", "parquet"]
    # Text formats: the column names in file order when there is no header; with
    # ``header: true`` the first line of each file is checked against them and skipped.
    columns: list[str] = Field(min_length=1)
    header: bool = False
    separator: str | None = None  # default: tab for tsv, comma for csv

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns: list[str]) -> list[str]:
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise ValueError(
                f"duplicate column names {dupes}: each column needs its own name (a field "
                "would silently read another column)"
            )
        return columns

    @property
    def sep(self) -> str:
        if self.separator is not None:
            return self.separator
        return "\t" if self.format == "tsv" else ","


class LabelSpec(_Strict):
    column: str = "label"
    # Raw strings that mean a click / no click; anything else is quarantined as bad_label.
    positive: list[str] = ["1"]
    negative: list[str] = ["0"]


def _param_type(p: Param) -> Any:
    return Annotated[p.type, Field(**dict(p.constraints))]


# Generated from the registry of encodings: every shared param's default, overridable per field.
EncodingDefaults = create_model(
    "EncodingDefaults",
    __base__=_Strict,
    __doc__="Defaults every field inherits unless it sets its own value (see the encodings).",
    **{
        p.name: (_param_type(p), Field(default=p.default, description=p.doc))
        for p in all_params().values()
        if p.shared
    },
)

FieldKind = Literal["categorical", "numeric", "multi_categorical"]
Transform = Literal[tuple(TRANSFORMS)]  # type: ignore[valid-type]


class _FieldBase(_Strict):
    """One logical feature field: where it comes from and how it becomes ids.

    The encoding's params (generated from the registry of encodings, all optional here) fall
    back to the config's ``encoding`` defaults; :meth:`DatasetConfig.field_defs` resolves
    them, so downstream code never sees ``None`` for a parameter its encoding uses.
    """

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    source: str | None = None  # input column; defaults to ``name``
    kind: FieldKind
    encoding: str
    transform: Transform = "none"
    # numeric: values must parse as this type, or the row is quarantined (bad_int / bad_float)
    dtype: Literal["int", "float"] = "float"

    @model_validator(mode="after")
    def _check_encoding(self) -> _FieldBase:
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"field {self.name!r}: unknown encoding {self.encoding!r} "
                f"(expected one of {', '.join(ENCODINGS)})"
            )
        enc = ENCODINGS[self.encoding]
        allowed = [n for n, c in ENCODINGS.items() if self.kind in c.kinds]
        if self.kind not in enc.kinds:
            raise ValueError(
                f"field {self.name!r}: encoding {self.encoding!r} is not valid for kind "
                f"{self.kind!r} (expected one of {', '.join(allowed)})"
            )
        if self.kind == "multi_categorical" and not getattr(self, "separator", None):
            raise ValueError(f"field {self.name!r}: multi_categorical needs a `separator`")
        used = {p.name for p in enc.params_for(self.kind)}
        for name in all_params():
            if name not in used and getattr(self, name, None) is not None:
                where = (
                    "multi_categorical"
                    if name in {p.name for p in MULTI_PARAMS}
                    else f"encoding {self.encoding!r}"
                )
                raise ValueError(f"field {self.name!r}: `{name}` does not apply to {where}")
        return self

    @property
    def input_column(self) -> str:
        return self.source or self.name


FieldSpec = create_model(
    "FieldSpec",
    __base__=_FieldBase,
    __doc__=_FieldBase.__doc__,
    **{
        p.name: (_param_type(p) | None, Field(default=None, description=p.doc))
        for p in all_params().values()
    },
)


class SplitSpec(_Strict):
    """Train/valid/test assignment. Vocabularies and bins are learned on train only.

    ``hash``: a stable hash of the raw row against the fractions (``seed`` salts the hash).
    ``time``: by ``column``; either ``cutoffs`` (valid from, test from; compared as strings
    of the raw column, which orders correctly for fixed-width timestamps such as YYMMDDHH)
    or ``fractions`` of the time-ordered rows (cut points found with Spark's approxQuantile).
    """

    method: Literal["hash", "time"] = "hash"
    fractions: dict[Literal["train", "valid", "test"], float] = {
        "train": 0.8,
        "valid": 0.1,
        "test": 0.1,
    }
    seed: int = 42
    column: str | None = None
    cutoffs: dict[Literal["valid", "test"], str] | None = None

    @model_validator(mode="after")
    def _check(self) -> SplitSpec:
        if set(self.fractions) != {"train", "valid", "test"}:
            raise ValueError("split.fractions needs exactly train, valid and test")
        if any(v < 0 for v in self.fractions.values()) or self.fractions["train"] <= 0:
            raise ValueError("split.fractions must be >= 0, with train > 0")
        total = sum(self.fractions.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.fractions must sum to 1 (they sum to {total:g})")
        if self.method == "time" and not self.column:
            raise ValueError("split.method=time needs split.column")
        if self.cutoffs is not None and set(self.cutoffs) != {"valid", "test"}:
            raise ValueError("split.cutoffs needs exactly valid and test")
        return self


class OutputSpec(_Strict):
    # Petastorm shards by row group: small groups give many shards per split.
    row_group_rows: PositiveInt = 50_000
    rows_per_file: PositiveInt = 1_000_000


class TrainSpec(_Strict):
    # Defaults measured on MovieLens-100K and generated logs of 20K-1M rows (README, Defaults;
    # `python -m fm_spark.bench.defaults`): Adam at 0.003 with batches of 1,024 was best or
    # within noise of best for every model; per-occurrence L2 (l2_*) up to 1e-2 changed
    # nothing, a prior on every factor row (prior_l2_embed) of 16 lifted FFM on every generated
    # log by 0.004-0.006 at no cost beyond noise on MovieLens, and one of 4 on the weight rows
    # lifted MovieLens' LR by 0.010; no run improved after 2 epochs without progress.
    optimizer: Literal["adam", "adagrad", "ftrl"] = "adam"
    lr: float = Field(default=3e-3, gt=0)  # FTRL's alpha when optimizer is ftrl
    # FTRL-Proximal's beta, L1 and L2 (McMahan et al., 2013); unused by adam and adagrad.
    ftrl_beta: float = Field(default=1.0, ge=0)
    ftrl_l1: float = Field(default=0.0, ge=0)
    ftrl_l2: float = Field(default=0.0, ge=0)
    batch_size: PositiveInt = 1024
    epochs: PositiveInt = 30
    l2_embed: float = Field(default=0.0, ge=0)
    l2_linear: float = Field(default=0.0, ge=0)
    # A Gaussian prior on every row: the epoch's objective is the summed logloss plus
    # prior_l2 / 2 * ||w||^2 over all rows, charged lazily when a row is next used
    # (fm_spark/train/decay.py). Unlike l2_* it holds rare rows back (README, Defaults:
    # 4 on the weights, where MovieLens' LR gains 0.010 over 16; 16 on the factors).
    prior_l2_linear: float = Field(default=4.0, ge=0)
    prior_l2_embed: float = Field(default=16.0, ge=0)
    sparse: bool = True
    # AUC, as the promotion gate and the benchmarks judge; ties (under 1e-4) go to the lower
    # logloss (train/early_stopping.py). MovieLens: FM +0.008, FwFM +0.006 test AUC over
    # stopping on logloss (3 seeds); generated logs 20K-200K: the same epochs (README, Defaults).
    early_stopping_metric: Literal["logloss", "auc"] = "auc"
    patience: int = Field(default=2, ge=0)
    seed: int = 0
    shuffle_buffer: PositiveInt = 100_000
    workers: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    reader_pool: Literal["thread", "dummy"] = "thread"
    reader_workers: PositiveInt = 2
    # The validation split, scored after every epoch, is read once and kept in memory when
    # its tensors fit this many MiB (0: read it from Parquet every epoch). On MovieLens-100K
    # re-reading it took 75 ms of a 0.53 s FwFM epoch (cProfile; README, Training).
    valid_cache_mb: int = Field(default=256, ge=0)
    # torch intra-op threads per CPU worker; 0 = auto: one core left to the reader, except
    # for FFM, whose pair kernel uses them all (fm_spark/train/threads.py).
    threads: int = Field(default=0, ge=0)
    log_every_steps: PositiveInt = 50
    # Small splits: the batch shrinks to give an epoch at least this many steps, and the
    # learning rate follows it (fm_spark/train/sizing.py; README, Defaults).
    min_steps_per_epoch: PositiveInt = 50
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"

    @model_validator(mode="after")
    def _prior_needs_row_tables(self) -> TrainSpec:
        if not self.sparse and (self.prior_l2_linear > 0 or self.prior_l2_embed > 0):
            raise ValueError(
                "train.prior_l2_linear/prior_l2_embed are charged by the row optimizer, which "
                "needs train.sparse: true; with dense tables set both to 0 (train.l2_* remain)"
            )
        return self


class DatasetConfig(_Strict):
    name: str
    input: InputSpec
    label: LabelSpec = LabelSpec()
    encoding: EncodingDefaults = EncodingDefaults()
    fields: list[FieldSpec] = Field(min_length=1)
    split: SplitSpec = SplitSpec()
    output: OutputSpec = OutputSpec()
    max_bad_fraction: float = Field(default=0.01, ge=0, le=1)
    train: TrainSpec = TrainSpec()
    # Per-model hyperparameters, keyed by model name (lr, poly2, fm, ffm, fwfm), handed to
    # ``build_model`` as keyword arguments (which validates them against the model).
    models: dict[str, dict[str, Any]] = {}

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        names = [f.name for f in self.fields]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate field names: {', '.join(dupes)}")
        known = set(self.input.columns)
        if self.label.column not in known:
            raise ValueError(f"label.column {self.label.column!r} is not among input.columns")
        for f in self.fields:
            if f.input_column not in known:
                raise ValueError(
                    f"field {f.name!r}: source column {f.input_column!r} is not among input.columns"
                )
        if self.split.method == "time" and self.split.column not in known:
            raise ValueError(f"split.column {self.split.column!r} is not among input.columns")
        return self

    def field_defs(self) -> list[FieldDef]:
        """Every field with the params its encoding uses resolved (own value, else the
        ``encoding:`` default), as the encodings take them."""
        return [ENCODINGS[f.encoding].resolve(f, self.encoding) for f in self.fields]

    def resolved_fields(self) -> list[FieldSpec]:
        """Fields with every encoding parameter their encoding uses filled from defaults."""
        return [
            f.model_copy(update=dict(d.params))
            for f, d in zip(self.fields, self.field_defs(), strict=True)
        ]

    def model_params(self, model: str) -> dict[str, Any]:
        return dict(self.models.get(model) or {})


# --------------------------------------------------------------------------------------
# Loading, overrides, hashing


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_list_index(node, key, keys[: i + 1])]
            continue
        if key not in node or node[key] is None:
            node[key] = {}
        node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, keys)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {dotted}: {'.'.join(keys[:-1])} is not a mapping")


def _list_index(node: list[Any], key: str, path: list[str]) -> int:
    """List items are addressed by position or, for fields, by name (``fields.C1.min_count``)."""
    if key.lstrip("-").isdigit():
        return int(key)
    for i, item in enumerate(node):
        if isinstance(item, dict) and item.get("name") == key:
            return i
    raise ConfigError(f"--set {'.'.join(path)}: no list item named {key!r}")


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        _set_dotted(data, key.strip(), value)
    return data


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see README, Configuration)"
        elif err["type"] != "missing" and not isinstance(err.get("input"), dict | list):
            msg = f"{msg} (got {err.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], source: str = "<config>") -> DatasetConfig:
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def read_yaml_mapping(path: str | Path, what: str, hint: str = "") -> dict[str, Any]:
    """One reader for every YAML file a command takes (config, params, tune ranges), so each
    fails the same way: one :class:`ConfigError` line naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} file {path} does not exist{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid {what} {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {what} {path}: expected a mapping at the top level")
    return data


def load_params(path: str | Path) -> dict[str, Any]:
    """A ``--params`` file (e.g. ``fm-spark tune``'s ``best_params.yaml``): nested sections
    and/or dotted keys, flattened to ``{"train.lr": 0.01, ...}``."""
    data = read_yaml_mapping(path, "params")
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, f"{dotted}.")
            else:
                flat[dotted] = value

    walk(data, "")
    return flat


def load_config(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
) -> DatasetConfig:
    """Read, override and validate a dataset config. Errors are :class:`ConfigError`.

    ``params`` (dotted keys, :func:`load_params`) apply before ``overrides``, so ``--set``
    wins over ``--params``."""
    data = read_yaml_mapping(path, "config")
    for key, value in (params or {}).items():
        _set_dotted(data, key, value)
    apply_overrides(data, overrides)
    return parse_config(data, str(path))


def config_hash(cfg: DatasetConfig, sections: tuple[str, ...] | None = None) -> str:
    """A stable digest of the (resolved) config, recorded in outputs to tie them to it."""
    dumped = cfg.model_dump(mode="json")
    if sections is not None:
        dumped = {k: dumped[k] for k in sections}
    payload = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
