"""Batch scoring of raw logs with a registered model (``fm-spark score``)."""
