"""How many intra-op threads torch gets in a CPU worker.

While the train split streams, the Petastorm reader decodes row groups in its own threads and
a prefetch thread turns them into tensors; torch's default of one intra-op thread per core
leaves them no core, and the small ops of an LR/FM/FwFM step gain less from a second thread
than the feed loses. FFM's pair kernel is the step's bulk and parallel, so it keeps every
core. Measured on 2 cores, median epoch seconds over 2-3 runs, 1 thread against 2 (README,
Training):

| data, model | 1 | 2 |
|---|---:|---:|
| MovieLens, LR / FwFM | 0.19 / 0.47 | 0.23 / 0.60 |
| generated 200K, LR / FM / FwFM | 0.52 / 1.21 / 2.33 | 0.65 / 1.51 / 2.37 |
| generated 200K, FFM | 3.03 | 2.66 |

A shard trained from memory (:mod:`fm_spark.data.in_memory`) has no feed to leave a core to:
every model keeps them all. Same measure: the median `seconds` of epochs 2-4 of
``train(...)`` with ``--set train.epochs=4 --set train.threads=1`` against ``=2``, 3 runs each
in one process (2026-12-07, a faster machine than the table above's):

| data, model, from memory | 1 | 2 |
|---|---:|---:|
| MovieLens, LR / FM / FwFM | 0.070 / 0.137 / 0.178 | 0.068 / 0.136 / 0.182 |
| generated 100K, LR / FM / FwFM | 0.099 / 0.351 / 0.685 | 0.092 / 0.270 / 0.503 |

Except on small steps: a MovieLens batch (1,024 x 13 ids) gains nothing from the second
thread when the machine is quiet (above) and loses when it is not, since every op's
threads wait for the slowest one. In the quality benchmark's process (a Spark JVM beside
it, after MLlib's fits) FwFM's runs took 0.98-1.49 s to their best epoch with 2 threads and
0.98-1.05 s with 1 (2026-12-08, two rounds of 3 runs each). So a step of fewer than
:data:`SMALL_STEP_IDS` ids (generated 100K: 1,024 x 39 = 39,936) runs on one thread.
"""

from __future__ import annotations

import torch

from fm_spark.config import TrainSpec

__all__ = ["intra_op_threads"]

# Models whose step is bound by a parallel kernel, not by the feed.
_KERNEL_BOUND = frozenset({"ffm"})
# Ids per step (batch rows x id columns) below which a step from memory keeps one thread:
# torch splits an elementwise op between threads in chunks of 32,768 elements.
SMALL_STEP_IDS = 32_768


def intra_op_threads(
    spec: TrainSpec,
    model: str,
    distributed: bool,
    streams: bool = True,
    ids_per_step: int | None = None,
) -> int | None:
    """The thread count to set, or None to leave torch's (or the launcher's) choice alone.

    ``train.threads`` > 0 is taken as given. Auto (0) takes one thread from what torch would
    use (its default: one per core, or what an in-process caller set), for one CPU worker
    whose train split ``streams`` through Petastorm only: TorchDistributor's launcher already
    gives each of several workers one thread. A worker training from memory keeps every
    core, or one when its steps have fewer than :data:`SMALL_STEP_IDS` ids. The trainer
    restores the caller's count when the run ends.
    """
    if spec.threads > 0:
        return spec.threads
    if distributed or model in _KERNEL_BOUND:
        return None
    if not streams:
        small = ids_per_step is not None and ids_per_step < SMALL_STEP_IDS
        return 1 if small else None
    return max(1, torch.get_num_threads() - 1)
