"""Errors training reports to the user (the CLI prints the message and exits with status 2)."""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "TrainError"]


class TrainError(RuntimeError):
    """Training cannot start or cannot go on; the message says why and what to change."""


class NonFiniteLossError(TrainError):
    """The loss became NaN or infinite: the run stops before the weights are updated with it."""
