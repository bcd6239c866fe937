"""The training function every worker runs: in-process for one worker, per rank under DDP.

:func:`train_worker` takes a :class:`WorkerJob` (plain, picklable data: TorchDistributor ships
it to each process) and returns a summary. One epoch is exactly ``job.steps_per_epoch``
optimizer steps on every worker (see :func:`fm_spark.data.reader.steps_per_epoch`), so DDP's
collectives stay in lockstep however unevenly Petastorm sharded the row groups.

After each epoch, rank 0 scores the validation split with the plain (unwrapped) model, every
rank gets the result by broadcast and updates the same early-stopping state, and rank 0 writes
the best weights and an atomic checkpoint with every rank's RNG states. ``--resume`` loads
that checkpoint and replays the interrupted epoch from its start: the row-group order and the
shuffling buffer draw from a per-epoch seed, and every other RNG is restored, so a resumed
single-worker run repeats the uninterrupted one.

Tables built ``sparse`` (the default) are updated by :class:`~fm_spark.train.optim.RowOptimizer`
on the rows each batch touched. Under DDP they stay out of the DDP wrapper, which handles the
dense parameters only; their rows travel through
:class:`~fm_spark.train.row_exchange.RowExchange`, and every rank builds the model from the same
seed so the replicas start (and stay) identical.

Callbacks (``WorkerJob.callbacks``) let a tracker follow a run without the trainer knowing
it: picklable objects (they travel to the workers with the job) with either or both of

- ``on_epoch_end(epoch: int, record: dict)``: called on rank 0 after each epoch's
  validation, once that epoch's checkpoint (and best weights, if it improved) are written.
  ``record`` is a copy of the epoch's history entry: ``epoch``, ``train_loss``, ``seconds``
  (training steps only), ``epoch_seconds`` (with validation), ``samples_per_s`` (global, all
  workers) and ``valid`` (the metrics dict of
  :func:`~fm_spark.train.evaluate.evaluate_split`).
- ``on_train_end(summary: dict)``: called on rank 0 once, with the summary
  :func:`train_worker` returns (``history`` included), when training ends normally.

Other ranks never call them. An exception from a callback stops training as a
:class:`TrainError` naming the callback (so it reaches the driver under DDP too).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fm_spark.config import DatasetConfig, TrainSpec
from fm_spark.data.in_memory import batches_of, bytes_per_row, read_shard
from fm_spark.data.reader import Batch, open_batches, petastorm_seed
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train import checkpoint
from fm_spark.train.decay import RowDecay
from fm_spark.train.distributed import WorkerContext
from fm_spark.train.early_stopping import EarlyStopping
from fm_spark.train.errors import NonFiniteLossError, TrainError
from fm_spark.train.evaluate import evaluate_batches, evaluate_split
from fm_spark.train.factory import build, make_optimizers, model_hparams
from fm_spark.train.failure import record_failure
from fm_spark.train.logs import log, setup_logging
from fm_spark.train.progress import Progress
from fm_spark.train.row_exchange import RowExchange
from fm_spark.train.step import NonFiniteStep, StepFn, non_finite_message
from fm_spark.train.threads import intra_op_threads

__all__ = ["WorkerJob", "train_worker"]


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs, as plain values (it is pickled to each process)."""

    config: dict[str, Any]  # DatasetConfig.model_dump(mode="json")
    model: str
    train_url: str
    valid_url: str
    feature_map: str  # path of the run directory's copy of feature_map.json
    run_dir: str
    steps_per_epoch: int
    # Rows per step on this worker: train.batch_size is the global batch, split over workers.
    worker_batch_size: int
    distributed: bool = False
    resume: bool = False
    # Rows of the largest worker's train shard and of the validation split (Parquet
    # footers): whether a shard fits the shuffling buffer, the validation split
    # train.valid_cache_mb (0: unknown, read them from Parquet every epoch).
    train_shard_rows: int = 0
    valid_rows: int = 0
    # Id columns of a row (the feature map's): with worker_batch_size, the ids a step takes,
    # which decide train.threads auto (0: unknown).
    num_columns: int = 0
    # Picklable objects with on_epoch_end(epoch, record) and/or on_train_end(summary): see
    # the module docstring. Called on rank 0 only.
    callbacks: tuple[Any, ...] = ()

    def trains_from_memory(self, spec: TrainSpec) -> bool:
        """Whether every worker's shard fits the shuffling buffer, so is read once and
        permuted in memory each epoch (:meth:`Trainer._train_batches`)."""
        return 0 < self.train_shard_rows <= spec.shuffle_buffer


def train_worker(job: WorkerJob) -> dict[str, Any]:
    """Train on this worker's shard; rank 0 writes checkpoints. Returns the run summary.

    Under TorchDistributor every rank returns the same summary (broadcast from rank 0), since
    it keeps whichever rank's return value it reads.
    """
    setup_logging()
    cfg = DatasetConfig.model_validate(job.config)
    ctx = WorkerContext.start(cfg.train.device, job.distributed)
    threads = intra_op_threads(
        cfg.train,
        job.model,
        ctx.distributed,
        streams=not job.trains_from_memory(cfg.train),
        ids_per_step=job.worker_batch_size * job.num_columns or None,
    )
    before = torch.get_num_threads()
    if threads is not None and ctx.device.type == "cpu":
        torch.set_num_threads(threads)
    if not ctx.is_main:
        logging.getLogger("fm_spark").setLevel(logging.WARNING)
    try:
        return Trainer(job, cfg, ctx).run()
    except TrainError as exc:
        if job.distributed:
            record_failure(job.run_dir, ctx.rank, exc)
        raise
    finally:
        torch.set_num_threads(before)  # an in-process caller (tune, the benchmarks) keeps its own
        ctx.close()


def _notify(callbacks: tuple[Any, ...], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback that defines it; a failure becomes a TrainError."""
    for cb in callbacks:
        method = getattr(cb, hook, None)
        if method is None:
            continue
        try:
            method(*copy.deepcopy(args))
        except Exception as exc:
            raise TrainError(f"training callback {type(cb).__name__}.{hook} failed: {exc}") from exc


class Trainer:
    """One worker's run: setup, resume, the epochs, checkpoints, the summary."""

    def __init__(self, job: WorkerJob, cfg: DatasetConfig, ctx: WorkerContext) -> None:
        self.job, self.cfg, self.ctx, self.spec = job, cfg, ctx, cfg.train
        self.run_dir = Path(job.run_dir)
        self.fmap = FeatureMap.load(job.feature_map)
        self.rss_at_start = _rss()
        self.steps_run = 0
        self.train_rows: Batch | None = None  # this worker's shard, when kept in memory
        self.valid_rows: Batch | None = None

    # -- setup ------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        spec, ctx = self.spec, self.ctx
        # One seed for the model on every rank: DDP broadcasts rank 0's dense parameters,
        # but the tables stay out of DDP, so every replica must start from the same ones.
        _seed(spec.seed)
        self.model = build(self.cfg, self.job.model, self.fmap).to(ctx.device)
        _seed(spec.seed + ctx.rank)
        self.hparams = model_hparams(self.cfg, self.job.model)
        self.exchange = RowExchange(ctx.world_size) if ctx.distributed else None
        self.optimizers = make_optimizers(self.model, spec, exchange=self.exchange)
        self.stopper = EarlyStopping(spec.early_stopping_metric, spec.patience)
        self.history: list[dict[str, Any]] = []
        start = self._resume() if self.job.resume else 0
        net: nn.Module = self.model
        if ctx.distributed:
            net = _ddp(self.model, ctx)
        # The prior's per-step rate: lambda over the rows an epoch covers (all workers).
        decay = RowDecay.build(self.model, spec, self.job.steps_per_epoch * spec.batch_size)
        step_fn = StepFn(net, self.model, self.optimizers, ctx.device, decay)
        for epoch in range(start + 1, spec.epochs + 1):
            if self.stopper.should_stop:
                break
            self._epoch(epoch, step_fn)
        summary = self._summary()
        if ctx.is_main:
            _notify(self.job.callbacks, "on_train_end", summary)
        return summary

    def _resume(self) -> int:
        # On the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest.
        state = checkpoint.load(self.run_dir / checkpoint.CHECKPOINT_FILE, "cpu")
        if state is None:
            if self.ctx.is_main:
                log.info("--resume: no checkpoint in %s, starting from scratch", self.run_dir)
            return 0
        mine = {
            "model": self.job.model,
            "hparams": self.hparams,
            "num_features": self.fmap.num_features,
        }
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise TrainError(
                f"the checkpoint in {self.run_dir} was written for {theirs}, this run is "
                f"{mine}; choose another --output to train a different model"
            )
        self.model.load_state_dict(state["model_state"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.stopper.load_state_dict(state["early_stopping"])
        self.history = list(state["history"])
        rng = state["rng"]
        if len(rng) == self.ctx.world_size:
            checkpoint.restore_rng(rng[self.ctx.rank])
        elif self.ctx.is_main:
            log.warning(
                "checkpoint was written by %d worker(s), resuming with %d: shards and RNG "
                "states differ from the interrupted run, so the result will not repeat it",
                len(rng),
                self.ctx.world_size,
            )
        if self.ctx.is_main:
            log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])
        return int(state["epoch"])

    # -- one epoch ----------------------------------------------------------------------------
    def _epoch(self, epoch: int, step_fn: StepFn) -> None:
        spec, ctx, steps = self.spec, self.ctx, self.job.steps_per_epoch
        progress = Progress(
            epoch,
            spec.epochs,
            steps,
            self.job.worker_batch_size * ctx.world_size,
            spec.log_every_steps,
            ctx.is_main,
        )
        self.model.train()
        try:
            with self._train_batches(epoch) as batches:
                for step, batch in enumerate(self._exact(batches, steps), start=1):
                    try:
                        loss = step_fn(batch)
                    except NonFiniteStep as bad:
                        raise NonFiniteLossError(
                            non_finite_message(
                                bad.value,
                                epoch,
                                step,
                                (epoch - 1) * steps + step,
                                spec,
                                self.fmap,
                            )
                        ) from None
                    progress.update(step, loss)
                    self.steps_run += 1
        finally:
            progress.close()
        seconds = time.perf_counter() - progress.start
        valid = self._validate()
        metric = valid.get(spec.early_stopping_metric, math.nan)
        improved = self.stopper.update(epoch, metric, valid.get("logloss"))
        record = {
            "epoch": epoch,
            "train_loss": progress.loss_sum / steps,
            "seconds": seconds,
            "samples_per_s": steps * self.job.worker_batch_size * ctx.world_size / seconds,
            "valid": valid,
            # The epoch's wall time with its validation: what "seconds to the best epoch" adds.
            "epoch_seconds": time.perf_counter() - progress.start,
        }
        self.history.append(record)
        rng = ctx.all_gather(checkpoint.capture_rng())
        if ctx.is_main:
            if improved:
                best = self.run_dir / checkpoint.BEST_FILE
                checkpoint.atomic_save(self.model.state_dict(), best)
            last = self.run_dir / checkpoint.CHECKPOINT_FILE
            checkpoint.atomic_save(self._state(epoch, rng), last)
            log.info(
                "epoch %d/%d done in %.1fs: train loss %.5f, valid logloss %.5f auc %.4f%s",
                epoch,
                spec.epochs,
                seconds,
                record["train_loss"],
                valid.get("logloss", math.nan),
                valid.get("auc", math.nan),
                " (best)" if improved else "",
            )
            if self.stopper.should_stop:
                log.info(
                    "early stop: valid %s has not improved for %d epoch(s); best epoch %s",
                    spec.early_stopping_metric,
                    self.stopper.bad_epochs,
                    self.stopper.best_epoch,
                )
            _notify(self.job.callbacks, "on_epoch_end", epoch, record)

    def _train_batches(self, epoch: int) -> AbstractContextManager[Iterator[Batch]]:
        """This epoch's batches of this worker's shard, in the order the epoch's seed draws.

        A shard no larger than the shuffling buffer is read once and permuted in memory each
        epoch (:mod:`fm_spark.data.in_memory`: the buffer would hold it whole anyway); a
        larger one streams through Petastorm's reader and shuffling buffer every epoch.
        """
        spec, ctx = self.spec, self.ctx
        seed = petastorm_seed(spec.seed, epoch)
        shard = {"cur_shard": ctx.rank, "shard_count": ctx.world_size}
        read = self._reader_options()
        pin = ctx.device.type == "cuda"
        if self.job.trains_from_memory(spec):
            if self.train_rows is None:
                self.train_rows = read_shard(self.job.train_url, self.fmap, **shard, **read)
            size = self.job.worker_batch_size
            return nullcontext(batches_of(self.train_rows, size, seed=seed, pin_memory=pin))
        return open_batches(
            self.job.train_url,
            self.fmap,
            batch_size=self.job.worker_batch_size,
            shuffle=True,
            seed=seed,
            shuffle_buffer=spec.shuffle_buffer,
            pin_memory=pin,
            **shard,
            **read,
        )

    def _reader_options(self) -> dict[str, Any]:
        """The Petastorm reader settings every pass of this run uses."""
        return {"pool": self.spec.reader_pool, "workers": self.spec.reader_workers}

    def _exact(self, batches: Iterator[Batch], steps: int) -> Iterator[Batch]:
        """Exactly ``steps`` full batches; a shard that runs dry is an error, not a hang."""
        for step in range(1, steps + 1):
            batch = next(batches, None)
            if batch is None or batch.label.shape[0] != self.job.worker_batch_size:
                raise TrainError(
                    f"worker {self.ctx.rank} ran out of training data at step {step} of "
                    f"{steps}: its shard holds fewer rows than the Parquet footers say. Was "
                    f"{self.job.train_url} modified during training?"
                )
            yield batch

    def _validate(self) -> dict[str, float]:
        """Rank 0 scores the validation split; every rank gets the same numbers."""
        result: dict[str, float] = {}
        if self.ctx.is_main:
            spec, read = self.spec, self._reader_options()
            size = self.job.valid_rows * bytes_per_row(self.fmap)
            if self.valid_rows is None and 0 < size <= spec.valid_cache_mb * 2**20:
                self.valid_rows = read_shard(self.job.valid_url, self.fmap, **read)
            if self.valid_rows is not None:
                batches = batches_of(self.valid_rows, spec.batch_size)
                result = evaluate_batches(self.model, batches, self.ctx.device)
            else:
                result = evaluate_split(
                    self.model,
                    self.job.valid_url,
                    self.fmap,
                    batch_size=spec.batch_size,
                    device=self.ctx.device,
                    **read,
                )
        return self.ctx.broadcast(result)

    def _state(self, epoch: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "model": self.job.model,
            "hparams": self.hparams,
            "num_features": self.fmap.num_features,
            "model_state": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "early_stopping": self.stopper.state_dict(),
            "history": self.history,
            "rng": rng,
            "world_size": self.ctx.world_size,
        }

    def _exchange_bytes_per_step(self) -> float | None:
        """What the row all-gather moved per step (all workers' padded rows), or None."""
        if self.exchange is None or not self.steps_run:
            return None
        return self.exchange.payload_bytes / self.steps_run

    def _summary(self) -> dict[str, Any]:
        seconds = sum(h["seconds"] for h in self.history)
        samples = sum(h["samples_per_s"] * h["seconds"] for h in self.history)
        summary = {
            "epochs_run": self.history[-1]["epoch"] if self.history else 0,
            "best_epoch": self.stopper.best_epoch,
            "stopped_early": self.stopper.should_stop,
            "early_stopping_metric": self.spec.early_stopping_metric,
            "train_samples_per_s": samples / seconds if seconds else None,
            "steps_per_epoch": self.job.steps_per_epoch,
            "workers": self.ctx.world_size,
            "device": self.ctx.device.type,
            "sparse": self.hparams["sparse"],
            "row_exchange_bytes_per_step": self._exchange_bytes_per_step(),
            "worker_memory": self.ctx.all_gather(_memory(self.rss_at_start)),
            "history": self.history,
        }
        return self.ctx.broadcast(summary)


def _ddp(model: nn.Module, ctx: WorkerContext) -> nn.Module:
    """DDP over the dense parameters only: the row tables sync through their RowExchange."""
    tables = {id(t.weight) for t in model.row_tables()} if hasattr(model, "row_tables") else set()
    ignored = [name for name, p in model.named_parameters() if id(p) in tables]
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _status_bytes(key: str) -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process from /proc, in bytes; 0 elsewhere.

    Not ``getrusage``: Linux carries ``ru_maxrss`` across fork and exec, so a worker started
    by a big driver would report the driver's peak as its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _peak_rss() -> int:
    """This process's peak resident memory in bytes."""
    return _status_bytes("VmHWM")


def _rss() -> int:
    """This process's resident memory now, in bytes."""
    return _status_bytes("VmRSS")


def _memory(rss_at_start: int) -> dict[str, int]:
    return {"peak_rss": _peak_rss(), "rss_at_start": rss_at_start}


def _seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
