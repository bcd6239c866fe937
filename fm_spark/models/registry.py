"""Models by name, so a config dict (``{"name": "ffm", "embed_dim": 4}``) builds any of them."""

from __future__ import annotations

from typing import Any

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models.ffm import FieldAwareFactorizationMachine
from fm_spark.models.fm import FactorizationMachine
from fm_spark.models.fwfm import FieldWeightedFactorizationMachine
from fm_spark.models.layers import CTRModel
from fm_spark.models.lr import LogisticRegression
from fm_spark.models.poly2 import Poly2

MODELS: dict[str, type[CTRModel]] = {
    cls.name: cls
    for cls in (
        LogisticRegression,
        Poly2,
        FactorizationMachine,
        FieldAwareFactorizationMachine,
        FieldWeightedFactorizationMachine,
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def build_model(name: str, feature_map: FeatureMap, **hyperparameters: Any) -> CTRModel:
    """Build model ``name`` for ``feature_map``.

    Hyperparameters are checked against the model's own list (``MODELS[name].hyperparameters``)
    so a typo in a config fails here instead of silently training with a default.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    cls = MODELS[key]
    unknown = sorted(set(hyperparameters) - set(cls.hyperparameters))
    if unknown:
        raise ValueError(
            f"model {key!r} does not take hyperparameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(cls.hyperparameters)}"
        )
    return cls(feature_map, **hyperparameters)
