"""Running the training function on N workers: TorchDistributor outside, DDP inside.

The driver side is :func:`launch`: Spark's ``TorchDistributor`` starts the processes (local
mode on this machine when Spark's master is local, barrier tasks on the executors under a
cluster ``spark-submit``) and calls the training function in each with ``torchrun``'s
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...). The function and
its arguments are pickled, so they are plain data and an importable function, never Spark
objects.

The worker side is :class:`WorkerContext`: the process group (gloo on CPU, NCCL on GPU), the
worker's device, and the few collectives training needs (broadcast and gather of small Python
objects). With one worker it is a no-op stand-in, so the training loop has one code path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from fm_spark.train.errors import TrainError

__all__ = ["WorkerContext", "launch", "resolve_device"]

# Rank 0 evaluates the validation split while the other ranks wait in a collective; the
# default 30 min timeout would kill a run whose validation pass is long.
_COLLECTIVE_TIMEOUT = timedelta(hours=4)


def resolve_device(preference: str) -> torch.device:
    """``auto``: CUDA when a device is visible, else CPU. ``cuda`` without one is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if preference == "cuda":
        raise TrainError("train.device is cuda but torch sees no CUDA device; use --device cpu")
    return torch.device("cpu")


@dataclass
class WorkerContext:
    """Who this worker is and how it talks to the others."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls, device_preference: str, distributed: bool) -> WorkerContext:
        """Join the process group (when ``distributed``) and pick this worker's device."""
        device = resolve_device(device_preference)
        if not distributed:
            return cls(device=device)
        import torch.distributed as dist

        rank = int(os.environ["RANK"])
        world = int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_COLLECTIVE_TIMEOUT)
        return cls(rank=rank, world_size=world, local_rank=local_rank, device=device)

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` as rank ``src`` has it, on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._collective_device)
        return box[0]

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        """Leave the process group, after everything that uses it is gone.

        The DDP wrapper keeps the group alive through reference cycles; left to interpreter
        shutdown, tearing them down races gloo's threads and intermittently aborts the
        process ("terminate called without an active exception") after training succeeded.
        """
        if self.distributed:
            import gc

            import torch.distributed as dist

            gc.collect()
            if dist.is_initialized():
                dist.barrier()
                dist.destroy_process_group()

    @property
    def _collective_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def launch(fn: Callable[..., Any], *args: Any, num_processes: int, use_gpu: bool) -> Any:
    """Run ``fn(*args)`` on ``num_processes`` workers with TorchDistributor; rank 0's result.

    Uses the active SparkSession (or starts one with :func:`fm_spark.spark.get_spark`); local
    mode exactly when Spark's master is local. On a cluster, the run directory in ``args``
    must be on storage every executor and the driver can reach (HDFS mount, NFS, DBFS).
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    from fm_spark.spark import get_spark

    spark = get_spark()
    master = spark.sparkContext.master
    local_mode = master == "local" or master.startswith("local[")
    try:
        distributor = TorchDistributor(
            num_processes=num_processes, local_mode=local_mode, use_gpu=use_gpu
        )
    except RuntimeError as exc:  # GPU resources not configured in Spark
        raise TrainError(
            f"TorchDistributor cannot start {num_processes} GPU worker(s): {exc}. Configure "
            "spark.driver.resource.gpu.amount (local) or spark.task.resource.gpu.amount "
            "(cluster) with a discovery script, or train with --device cpu"
        ) from None
    return distributor.run(fn, *args)
