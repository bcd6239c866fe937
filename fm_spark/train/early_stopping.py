"""Early stopping on a validation metric, with patience; its state goes into checkpoints."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["AUC_TIE", "EarlyStopping"]

# Improvements smaller than this are noise (float32 metrics over finite validation sets).
_MIN_DELTA = 1e-6
# Validation AUCs this close are a tie: on 10^4 rows AUC's own noise is about 100x larger, and
# the promotion gate calls anything under 5e-4 a reproduction. A tie goes to the epoch with the
# better logloss, so AUC stopping never keeps an under-trained epoch whose ranking only matches.
AUC_TIE = 1e-4


@dataclass
class EarlyStopping:
    """Tracks the best epoch of ``metric`` (lower logloss / higher AUC is better).

    ``update`` returns True when the epoch is a new best (its weights are the result so far);
    ``should_stop`` turns True after ``patience`` epochs in a row without one (after the
    first such epoch when ``patience`` is 0, as in Keras). With ``auc``, an epoch within
    :data:`AUC_TIE` of the best AUC is a new best when its ``logloss`` is lower.
    """

    metric: Literal["logloss", "auc"] = "logloss"
    patience: int = 2
    best_value: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_logloss: float | None = None

    def update(self, epoch: int, value: float, logloss: float | None = None) -> bool:
        if value is None or math.isnan(value):
            improved = False
        elif self.best_value is None:
            improved = True
        elif self.metric == "auc":
            improved = value > self.best_value + AUC_TIE or (
                value >= self.best_value - AUC_TIE and _lower(logloss, self.best_logloss)
            )
        else:
            improved = value < self.best_value - _MIN_DELTA
        if improved:
            best = float(value)
            if self.metric == "auc" and self.best_value is not None:
                best = max(best, self.best_value)  # a tie must not walk the bar down
            self.best_value, self.best_epoch, self.bad_epochs = best, epoch, 0
            self.best_logloss = logloss
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


def _lower(new: float | None, old: float | None) -> bool:
    if new is None or old is None or math.isnan(new) or math.isnan(old):
        return False
    return new < old - _MIN_DELTA
