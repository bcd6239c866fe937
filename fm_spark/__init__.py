"""fm-spark: CTR prediction with the factorization-machine family."""

__version__ = "0.1.0"
