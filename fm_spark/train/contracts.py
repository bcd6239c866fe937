"""What training requires of its input beyond the schema: ids inside their own field.

``check_schema`` (``fm_spark.data.layout``) proves the Parquet has the feature map's columns
and that ids lie in ``[0, num_features)``. That still lets through a feature map from another
featurize run, or one whose sizes were lowered by hand: the ids of one field then land in the
embedding rows of its neighbour, training goes ahead, and serving (which encodes with the
map) disagrees with the model. Each column's ids must lie inside its own field's
``[offset, offset + size)``, which the Parquet footers' min/max statistics show without
reading a data page.
"""

from __future__ import annotations

from typing import Any

from fm_spark.features.feature_map import FeatureMap
from fm_spark.train.errors import TrainError

__all__ = ["check_field_ranges"]


def check_field_ranges(layout: Any, fmap: FeatureMap, split: str, data_dir: str) -> None:
    """Refuse a split whose id columns leave their field's range (from footer statistics)."""
    fields = {f.name: f for f in fmap.fields}
    problems = []
    for col in fmap.columns:
        lo, hi, _ = layout.id_stats.get(col.name, (None, None, 0))
        field = fields[col.field]
        first, last = field.offset, field.offset + field.size - 1
        if (lo is not None and lo < first) or (hi is not None and hi > last):
            problems.append(
                f"column {col.name!r} holds ids [{lo}, {hi}], field {field.name!r} owns "
                f"[{first}, {last}]"
            )
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        raise TrainError(
            f"{data_dir}: the {split} split does not match feature_map.json: {shown}. The map "
            "comes from another featurize run or was edited; re-run `fm-spark featurize` "
            "and train on its output as it is"
        )
