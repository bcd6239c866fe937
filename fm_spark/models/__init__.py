"""The FM family in PyTorch: LR, POLY2, FM, FFM and FwFM, built by name from a feature map."""

from fm_spark.models.ffm import FieldAwareFactorizationMachine
from fm_spark.models.fm import FactorizationMachine
from fm_spark.models.fwfm import FieldWeightedFactorizationMachine
from fm_spark.models.layers import CTRModel, FeaturesEmbedding, FeaturesLinear, fm_pairwise
from fm_spark.models.lr import LogisticRegression
from fm_spark.models.poly2 import Poly2, poly2_hash
from fm_spark.models.registry import MODEL_NAMES, MODELS, build_model

__all__ = [
    "MODELS",
    "MODEL_NAMES",
    "CTRModel",
    "FactorizationMachine",
    "FeaturesEmbedding",
    "FeaturesLinear",
    "FieldAwareFactorizationMachine",
    "FieldWeightedFactorizationMachine",
    "LogisticRegression",
    "Poly2",
    "build_model",
    "fm_pairwise",
    "poly2_hash",
]
