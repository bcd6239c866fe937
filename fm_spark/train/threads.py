"""How many intra-op threads torch gets in a CPU worker.

The Petastorm reader decodes row groups in its own threads and a prefetch thread turns them
into tensors; torch's default of one intra-op thread per core leaves them no core, and the
small ops of an LR/FM/FwFM step gain less from a second thread than the feed loses. FFM's pair
kernel is the step's bulk and parallel, so it keeps every core. Measured on 2 cores, median
epoch seconds over 2-3 runs, 1 thread against 2 (README, Training):

| data, model | 1 | 2 |
|---|---:|---:|
| MovieLens, LR / FwFM | 0.19 / 0.47 | 0.23 / 0.60 |
| generated 200K, LR / FM / FwFM | 0.52 / 1.21 / 2.33 | 0.65 / 1.51 / 2.37 |
| generated 200K, FFM | 3.03 | 2.66 |
"""

from __future__ import annotations

import torch

from fm_spark.config import TrainSpec

__all__ = ["intra_op_threads"]

# Models whose step is bound by a parallel kernel, not by the feed.
_KERNEL_BOUND = frozenset({"ffm"})


def intra_op_threads(spec: TrainSpec, model: str, distributed: bool) -> int | None:
    """The thread count to set, or None to leave torch's (or the launcher's) choice alone.

    ``train.threads`` > 0 is taken as given. Auto (0) takes one thread from what torch would
    use (its default: one per core, or what an in-process caller set), for one CPU worker
    only: TorchDistributor's launcher already gives each of several workers one thread.
    The trainer restores the caller's count when the run ends.
    """
    if spec.threads > 0:
        return spec.threads
    if distributed or model in _KERNEL_BOUND:
        return None
    return max(1, torch.get_num_threads() - 1)
