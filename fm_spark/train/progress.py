"""Progress of one epoch: a tqdm bar on a terminal, plain log lines otherwise (CI, logs)."""

from __future__ import annotations

import sys
import time

from fm_spark.train.logs import log

__all__ = ["Progress"]


class Progress:
    """Running loss and samples/s of one epoch; ``loss_sum`` and ``start`` feed its record."""

    def __init__(
        self, epoch: int, epochs: int, steps: int, samples_per_step: int, every: int, show: bool
    ) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.samples_per_step, self.every, self.show = samples_per_step, every, show
        self.loss_sum = 0.0
        self.start = time.perf_counter()
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", dynamic_ncols=True
            )

    def update(self, step: int, loss: float) -> None:
        self.loss_sum += loss
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(1)
            if step % 10 == 0 or step == self.steps:
                self.bar.set_postfix(
                    loss=f"{self.loss_sum / step:.4f}",
                    samples_s=f"{self.rate(step):,.0f}",
                    refresh=False,
                )
        elif step % self.every == 0 or step == self.steps:
            log.info(
                "epoch %d/%d step %d/%d loss %.5f %.0f samples/s",
                self.epoch,
                self.epochs,
                step,
                self.steps,
                self.loss_sum / step,
                self.rate(step),
            )

    def rate(self, step: int) -> float:
        return step * self.samples_per_step / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
