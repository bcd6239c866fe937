"""The search space of ``fm-spark tune``: per-model ranges (``conf/tune.yaml``), validated,
and how one Optuna trial turns them into config overrides.

The space is data, like every other setting: a range file names, per model, which of
``lr``, ``l2_embed``, ``l2_linear``, ``prior_l2_embed``, ``prior_l2_linear``, ``embed_dim`` and
``batch_size`` to search and over
what. Each maps to one dotted config key (``train.lr``, ``models.fm.embed_dim``), so a
trial's parameters are exactly the overrides ``fm-spark train --params`` applies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from fm_spark.config import ConfigError, read_yaml_mapping

__all__ = ["DEFAULT_RANGES", "ModelSpace", "TuneSpec", "config_keys", "load_ranges"]

DEFAULT_RANGES = Path("conf/tune.yaml")
FACTORIZED = ("fm", "ffm", "fwfm")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FloatRange(_Strict):
    low: float = Field(ge=0)
    high: float = Field(gt=0)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Choices(_Strict):
    choices: list[PositiveInt] = Field(min_length=1)


class ModelSpace(_Strict):
    lr: FloatRange | None = None
    l2_embed: FloatRange | None = None
    l2_linear: FloatRange | None = None
    prior_l2_embed: FloatRange | None = None
    prior_l2_linear: FloatRange | None = None
    embed_dim: Choices | None = None
    batch_size: Choices | None = None

    def suggest(self, trial: Any, model: str) -> dict[str, Any]:
        """This trial's values as dotted config keys (``train.lr``, ``models.fm.embed_dim``)."""
        for name in ("lr", "l2_embed", "l2_linear", "prior_l2_embed", "prior_l2_linear"):
            rng: FloatRange | None = getattr(self, name)
            if rng is not None:
                trial.suggest_float(name, rng.low, rng.high, log=rng.log)
        for name in ("batch_size", "embed_dim"):
            picks: Choices | None = getattr(self, name)
            if picks is not None:
                trial.suggest_categorical(name, picks.choices)
        return config_keys(trial.params, model)


def config_keys(values: dict[str, Any], model: str) -> dict[str, Any]:
    """Trial parameters (``lr``, ``embed_dim``) as the dotted config keys they set."""
    return {
        (f"models.{model}.{k}" if k == "embed_dim" else f"train.{k}"): v for k, v in values.items()
    }


class TuneSpec(_Strict):
    metric: Literal["auc", "logloss"] = "auc"
    seed: int = 0
    startup_trials: int = Field(default=2, ge=0)
    models: dict[Literal["lr", "poly2", "fm", "ffm", "fwfm"], ModelSpace] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> TuneSpec:
        for name, space in self.models.items():
            if space.embed_dim is not None and name not in FACTORIZED:
                raise ValueError(f"models.{name}.embed_dim: {name} has no embeddings to size")
            if space.model_dump(exclude_none=True) == {}:
                raise ValueError(f"models.{name}: no parameter to search")
        return self

    @property
    def direction(self) -> str:
        return "maximize" if self.metric == "auc" else "minimize"

    def space(self, model: str, source: str = "the ranges file") -> ModelSpace:
        if model not in self.models:
            raise ConfigError(f"{source} has no ranges for model {model!r} (models.{model})")
        return self.models[model]  # type: ignore[index]


def load_ranges(path: str | Path | None = None) -> TuneSpec:
    """Read and validate a range file; every problem is one :class:`ConfigError`."""
    path = Path(path) if path else DEFAULT_RANGES
    data = read_yaml_mapping(path, "tune ranges", hint=" (pass --ranges)")
    try:
        return TuneSpec.model_validate(data)
    except ValidationError as exc:
        lines = [f"invalid tune ranges {path}:"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
