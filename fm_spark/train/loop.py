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
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fm_spark.config import DatasetConfig, TrainSpec
from fm_spark.data.reader import Batch, open_batches, petastorm_seed
from fm_spark.features.feature_map import FeatureMap
from fm_spark.train import checkpoint
from fm_spark.train.distributed import WorkerContext
from fm_spark.train.early_stopping import EarlyStopping
from fm_spark.train.errors import NonFiniteLossError, TrainError
from fm_spark.train.metrics import Accumulator

__all__ = [
    "FAILURE_FILE",
    "StepFn",
    "WorkerJob",
    "build",
    "evaluate_split",
    "make_optimizers",
    "model_hparams",
    "read_failure",
    "setup_logging",
    "train_worker",
]

log = logging.getLogger("fm_spark.train")

# Where a failing worker leaves its message for the driver: under TorchDistributor the driver
# only sees "process exited with code 1" and the tail of the output.
FAILURE_FILE = ".failure.json"


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


def setup_logging() -> None:
    """INFO lines from ``fm_spark`` to stderr, unless the application configured logging."""
    logger = logging.getLogger("fm_spark")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


# --------------------------------------------------------------------------------------
# Model and optimizers


def model_hparams(cfg: DatasetConfig, name: str, dense_only: bool = False) -> dict[str, Any]:
    """``build_model`` keyword arguments: ``train``'s sparse/L2, overridden by the model's own
    section; ``dense_only`` forces dense embedding gradients (NCCL cannot reduce sparse ones).
    """
    params = {
        "sparse": cfg.train.sparse,
        "l2_embed": cfg.train.l2_embed,
        "l2_linear": cfg.train.l2_linear,
        **cfg.model_params(name),
    }
    if dense_only:
        params["sparse"] = False
    return params


def build(cfg: DatasetConfig, name: str, fmap: FeatureMap, dense_only: bool = False) -> nn.Module:
    from fm_spark.models import build_model

    try:
        return build_model(name, fmap, **model_hparams(cfg, name, dense_only))
    except (TypeError, ValueError) as exc:
        raise TrainError(f"cannot build model {name!r}: {exc}") from None


def make_optimizers(model: nn.Module, spec: TrainSpec) -> list[torch.optim.Optimizer]:
    """Dense parameters get Adam/Adagrad; sparse embedding tables their sparse counterpart.

    ``SparseAdam`` updates only the rows a batch touched (lazy Adam); ``Adagrad`` handles
    sparse gradients itself. Weight decay is left out on purpose: on a sparse table it would
    touch every row; L2 comes from the model's ``penalty`` on the rows in the batch instead.
    """
    sparse = list(model.sparse_parameters())
    dense = list(model.dense_parameters())
    opts: list[torch.optim.Optimizer] = []
    if spec.optimizer == "adam":
        if dense:
            opts.append(torch.optim.Adam(dense, lr=spec.lr))
        if sparse:
            opts.append(torch.optim.SparseAdam(sparse, lr=spec.lr))
    else:
        if dense:
            opts.append(torch.optim.Adagrad(dense, lr=spec.lr))
        if sparse:
            opts.append(torch.optim.Adagrad(sparse, lr=spec.lr))
    return opts


# --------------------------------------------------------------------------------------
# One step


class _NonFinite(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Host -> device without blocking the host (batches for CUDA come pinned from the
    reader's prefetch thread, see ``open_batches(pin_memory=...)``)."""
    if device.type != "cuda":
        return batch

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)

    return Batch(move(batch.ids), move(batch.values), move(batch.label))


class StepFn:
    """One optimizer step on one batch: forward, BCE + L2 on the touched rows, backward, update.

    ``net`` is what runs forward (the DDP wrapper when distributed); ``model`` is the plain
    module, used for the penalty so the wrapper stays a pure ``forward``. The loss is checked
    *before* backward: a NaN never reaches the weights. Shared with the benchmark, so what it
    measures is this code path.
    """

    def __init__(
        self,
        net: nn.Module,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        device: torch.device,
    ) -> None:
        self.net, self.model, self.optimizers, self.device = net, model, optimizers, device
        self.autocast = device.type == "cuda"
        self.loss_fn = nn.BCEWithLogitsLoss()

    def __call__(self, batch: Batch) -> float:
        ids, values, label = to_device(batch, self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.net(ids, values)
        # Mean BCE plus the per-example L2 (penalty sums over the batch's rows).
        loss = self.loss_fn(logits.float(), label) + self.model.penalty(ids) / ids.shape[0]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _NonFinite(value)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers:
            opt.step()
        return value


def _non_finite_message(
    value: float, epoch: int, step: int, global_step: int, spec: TrainSpec, fmap: FeatureMap
) -> str:
    values = [v for v in fmap.value_columns if v]
    numeric = (
        f"the numeric value column(s) {', '.join(values[:5])} are not scaled (large raw values "
        "blow up the interaction terms: bin them or scale them in the feature config)"
        if values
        else "numeric inputs are not scaled (this feature map has no value columns, so "
        "this is unlikely here)"
    )
    return (
        f"loss became {value} at epoch {epoch}, step {step} (global step {global_step}); "
        "training stopped before applying it, so the last checkpoint and best weights are "
        f"intact. Likely causes: the learning rate is too high for {spec.optimizer} "
        f"(train.lr={spec.lr:g}; try --set train.lr={spec.lr / 10:g}), or {numeric}."
    )


# --------------------------------------------------------------------------------------
# Progress


class _Progress:
    """A tqdm bar on a terminal, plain log lines every ``every`` steps otherwise (CI, logs)."""

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


# --------------------------------------------------------------------------------------
# Evaluation


def evaluate_split(
    model: nn.Module,
    url: str,
    fmap: FeatureMap,
    *,
    batch_size: int,
    device: torch.device,
    pool: str = "thread",
    workers: int = 2,
) -> dict[str, float]:
    """Metrics of ``model`` over a whole split (one pass, no shuffling, no gradients)."""
    was_training = model.training
    model.eval()
    acc = Accumulator()
    autocast = device.type == "cuda"
    try:
        with (
            torch.no_grad(),
            open_batches(
                url,
                fmap,
                batch_size=batch_size,
                pool=pool,
                workers=workers,
                pin_memory=device.type == "cuda",
            ) as it,
        ):
            for batch in it:
                ids, values, label = to_device(batch, device)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = model(ids, values)
                acc.update(label.cpu().numpy(), logits.float().cpu().numpy())
    finally:
        model.train(was_training)
    return acc.compute()


# --------------------------------------------------------------------------------------
# The worker


def train_worker(job: WorkerJob) -> dict[str, Any]:
    """Train on this worker's shard; rank 0 writes checkpoints. Returns the run summary.

    Under TorchDistributor every rank returns the same summary (broadcast from rank 0), since
    it keeps whichever rank's return value it reads.
    """
    setup_logging()
    cfg = DatasetConfig.model_validate(job.config)
    ctx = WorkerContext.start(cfg.train.device, job.distributed)
    if not ctx.is_main:
        logging.getLogger("fm_spark").setLevel(logging.WARNING)
    try:
        return _Trainer(job, cfg, ctx).run()
    except TrainError as exc:
        if job.distributed:
            _record_failure(job.run_dir, ctx.rank, exc)
        raise
    finally:
        ctx.close()


def _record_failure(run_dir: str, rank: int, exc: TrainError) -> None:
    path = Path(run_dir) / FAILURE_FILE
    tmp = path.with_name(f"{path.name}.{rank}.tmp")
    payload = {"rank": rank, "kind": type(exc).__name__, "message": str(exc)}
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)


def read_failure(run_dir: str | Path) -> TrainError | None:
    """The error a worker recorded with :func:`_record_failure`, rebuilt on the driver."""
    path = Path(run_dir) / FAILURE_FILE
    if not path.exists():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    kind = NonFiniteLossError if payload.get("kind") == "NonFiniteLossError" else TrainError
    return kind(f"worker {payload['rank']}: {payload['message']}")


class _Trainer:
    def __init__(self, job: WorkerJob, cfg: DatasetConfig, ctx: WorkerContext) -> None:
        self.job, self.cfg, self.ctx, self.spec = job, cfg, ctx, cfg.train
        self.run_dir = Path(job.run_dir)
        self.fmap = FeatureMap.load(job.feature_map)

    # -- setup ------------------------------------------------------------------------------
    def _dense_only(self) -> bool:
        """Multi-worker runs train with dense embedding gradients.

        NCCL cannot all-reduce sparse gradients at all. On gloo, torch 2.13's DDP with sparse
        embedding gradients corrupted worker heaps here (SIGSEGV / SIGABRT "malloc(): unaligned
        tcache chunk", or a hang, in roughly 1 of 3 runs of a few thousand steps whenever
        another thread allocated, e.g. the data path; reproduced with a bare sparse
        ``nn.Embedding``, no Petastorm), while the same runs with dense gradients never
        failed. Dense gradients cost an all-reduce and an optimizer update of whole tables
        per step; one worker keeps ``train.sparse``.
        """
        if not self.ctx.distributed:
            return False
        if model_hparams(self.cfg, self.job.model)["sparse"] and self.ctx.is_main:
            log.info(
                "%d workers: %s trains with dense embedding gradients (sparse ones are not "
                "safe under DDP here, see loop._Trainer._dense_only)",
                self.ctx.world_size,
                self.job.model,
            )
        return True

    def run(self) -> dict[str, Any]:
        spec, ctx = self.spec, self.ctx
        _seed(spec.seed + ctx.rank)
        dense_only = self._dense_only()
        self.model = build(self.cfg, self.job.model, self.fmap, dense_only).to(ctx.device)
        self.hparams = model_hparams(self.cfg, self.job.model, dense_only)
        self.optimizers = make_optimizers(self.model, spec)
        self.stopper = EarlyStopping(spec.early_stopping_metric, spec.patience)
        self.history: list[dict[str, Any]] = []
        start = self._resume() if self.job.resume else 0
        net: nn.Module = self.model
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        step_fn = StepFn(net, self.model, self.optimizers, ctx.device)
        for epoch in range(start + 1, spec.epochs + 1):
            if self.stopper.should_stop:
                break
            self._epoch(epoch, step_fn)
        return self._summary()

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
        progress = _Progress(
            epoch,
            spec.epochs,
            steps,
            self.job.worker_batch_size * ctx.world_size,
            spec.log_every_steps,
            ctx.is_main,
        )
        self.model.train()
        try:
            with open_batches(
                self.job.train_url,
                self.fmap,
                batch_size=self.job.worker_batch_size,
                shuffle=True,
                seed=petastorm_seed(spec.seed, epoch),
                shuffle_buffer=spec.shuffle_buffer,
                cur_shard=ctx.rank,
                shard_count=ctx.world_size,
                pool=spec.reader_pool,
                workers=spec.reader_workers,
                pin_memory=ctx.device.type == "cuda",
            ) as batches:
                for step, batch in enumerate(self._exact(batches, steps), start=1):
                    try:
                        loss = step_fn(batch)
                    except _NonFinite as bad:
                        raise NonFiniteLossError(
                            _non_finite_message(
                                bad.value,
                                epoch,
                                step,
                                (epoch - 1) * steps + step,
                                spec,
                                self.fmap,
                            )
                        ) from None
                    progress.update(step, loss)
        finally:
            progress.close()
        seconds = time.perf_counter() - progress.start
        valid = self._validate()
        metric = valid.get(spec.early_stopping_metric, math.nan)
        improved = self.stopper.update(epoch, metric)
        record = {
            "epoch": epoch,
            "train_loss": progress.loss_sum / steps,
            "seconds": seconds,
            "samples_per_s": steps * self.job.worker_batch_size * ctx.world_size / seconds,
            "valid": valid,
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
            result = evaluate_split(
                self.model,
                self.job.valid_url,
                self.fmap,
                batch_size=self.spec.batch_size,
                device=self.ctx.device,
                pool=self.spec.reader_pool,
                workers=self.spec.reader_workers,
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
            "history": self.history,
        }
        return self.ctx.broadcast(summary)


def _seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
