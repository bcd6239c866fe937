"""Early stopping on a validation metric, with patience; its state goes into checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["EarlyStopping"]

# Improvements smaller than this are noise (float32 metrics over finite validation sets).
_MIN_DELTA = 1e-6


@dataclass
class EarlyStopping:
    """Tracks the best epoch of ``metric`` (lower logloss / higher AUC is better).

    ``update`` returns True when the epoch is a new best (its weights are the result so far);
    ``should_stop`` turns True after ``patience`` epochs in a row without one (after the
    first such epoch when ``patience`` is 0, as in Keras).
    """

    metric: Literal["logloss", "auc"] = "logloss"
    patience: int = 2
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0

    def update(self, epoch: int, value: float) -> bool:
        if value is None or math.isnan(value):
            improved = False
        elif self.best_value is None:
            improved = True
        elif self.metric == "auc":
            improved = value > self.best_value + _MIN_DELTA
        else:
            improved = value < self.best_value - _MIN_DELTA
        if improved:
            self.best_value, self.best_epoch, self.bad_epochs = float(value), epoch, 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
