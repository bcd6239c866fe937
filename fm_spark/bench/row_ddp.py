"""Sparse tables under DDP, measured directly: N gloo workers on one global batch stream.

Each worker builds the same model (same seed), wraps it in DDP the way training does (the row
tables left out of DDP, synced by :class:`~fm_spark.train.row_exchange.RowExchange`), and
steps through the same deterministic global batches, taking its ``1/N`` slice of each. With
``world=1`` it is the single-worker path on whole batches. Used by the DDP tests (same weights
as one worker, traffic per step) and the benchmark's DDP row; no Spark or Petastorm in the
way, so what is measured is the step and its collectives.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fm_spark.config import TrainSpec
from fm_spark.data.reader import Batch
from fm_spark.features.feature_map import FeatureMap

__all__ = ["DDPRun", "run_workers"]


@dataclass(frozen=True)
class DDPRun:
    """What to run: a model on synthetic skewed batches, ``steps`` steps of ``batch`` rows."""

    model: str
    field_sizes: list[int]
    hparams: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # TrainSpec fields
    batch: int = 512
    steps: int = 4
    warmup: int = 0
    seed: int = 0
    threads: int = 1
    # Draw each field's ids from its first draw_sizes[f] ids only (default: all of them), so a
    # run with larger tables can see exactly the same ids.
    draw_sizes: list[int] | None = None


def global_batches(run: DDPRun, fmap: FeatureMap) -> list[Batch]:
    """The same ``warmup + steps`` global batches on every worker (head-heavy ids)."""
    g = torch.Generator().manual_seed(run.seed + 1)
    offsets = torch.tensor(fmap.field_offsets)
    sizes = torch.tensor(run.draw_sizes or fmap.field_sizes)
    out = []
    for _ in range(run.warmup + run.steps):
        u = torch.rand(run.batch, fmap.num_columns, generator=g)
        ids = offsets + (u.pow(3) * sizes).long().clamp_max(sizes - 1)
        label = (torch.rand(run.batch, generator=g) < 0.25).float()
        out.append(Batch(ids, None, label))
    return out


def _worker(rank: int, world: int, port: int, run: DDPRun, out_dir: str) -> None:
    import torch.distributed as dist

    from fm_spark.models import build_model
    from fm_spark.train.distributed import WorkerContext
    from fm_spark.train.factory import make_optimizers
    from fm_spark.train.row_exchange import RowExchange
    from fm_spark.train.step import StepFn
    from fm_spark.train.trainer import _ddp, _peak_rss

    torch.set_num_threads(run.threads)
    fmap = FeatureMap.synthetic(run.field_sizes)
    data = global_batches(run, fmap)
    torch.manual_seed(run.seed)
    model = build_model(run.model, fmap, sparse=True, **run.hparams)
    spec = TrainSpec(**run.spec)
    exchange = None
    net: torch.nn.Module = model
    ctx = WorkerContext(rank=rank, world_size=world)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        exchange = RowExchange(world)
        net = _ddp(model, ctx)
    step = StepFn(net, model, make_optimizers(model, spec, exchange=exchange), torch.device("cpu"))
    share = run.batch // world
    part = slice(rank * share, (rank + 1) * share)
    losses = []
    for b in data[: run.warmup]:
        step(Batch(b.ids[part], None, b.label[part]))
    if exchange is not None:
        exchange.reset()
        dist.barrier()
    start = time.perf_counter()
    for b in data[run.warmup :]:
        losses.append(step(Batch(b.ids[part], None, b.label[part])))
    seconds = time.perf_counter() - start
    result = {
        "rank": rank,
        "seconds": seconds,
        "samples_per_s": run.steps * run.batch / seconds,
        "bytes_per_step": exchange.payload_bytes / run.steps if exchange else 0.0,
        "losses": losses,
        "peak_rss": _peak_rss(),
        "state": model.state_dict(),
    }
    torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    # Drop the DDP wrapper before leaving the group (see WorkerContext.close): left to
    # interpreter shutdown, it intermittently aborts the worker after the run succeeded.
    del step, net, exchange
    ctx.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(run: DDPRun, world: int) -> list[dict[str, Any]]:
    """Run ``run`` on ``world`` fresh processes; every rank's result (rank 0 first)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="fm-spark-ddp-") as tmp:
        mp.start_processes(
            _worker, args=(world, _free_port(), run, tmp), nprocs=world, start_method="spawn"
        )
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False) for r in range(world)]
