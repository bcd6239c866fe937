"""Moved: the planted-data generators are one module, :mod:`fm_spark.datagen`.

Kept so existing imports keep working; new code imports from ``fm_spark.datagen``.
"""

from fm_spark.datagen import write_planted_dataset

__all__ = ["write_planted_dataset"]
