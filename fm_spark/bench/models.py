"""Whole training steps of the FM family, on the path training uses, against FFM references.

One step is what :class:`~fm_spark.train.step.StepFn` does in training: forward, BCE + L2,
backward, and the optimizer, here the fused row update of sparse tables
(:class:`~fm_spark.train.optim.RowOptimizer`, Adam) plus dense Adam, and on the CPU FFM's C++
pair kernel when it is built. The input is Criteo-shaped (39 fields, batch 4096, skewed ids).
References run in the same process, timed alternately step by step with this project's FFM so
that load from other processes hits all of them alike:

- the per-field-pair loop (``models/reference.py``'s ``TextbookFFM``: one table per field and a
  Python loop over the 741 pairs, as libffm and pytorch-fm write FFM),
- the one-gather vectorization (FuxiCTR's FFMv2 form, ``OneGatherFFM``),
- this project's FFM as it trained before the row update (torch ops, ``SparseAdam``),

each with sparse embedding gradients and ``SparseAdam``. A DDP row runs 1 and 2 gloo workers
on the same global batches (:mod:`fm_spark.bench.row_ddp`) with two table sizes and the same
ids, and the last table is the samples/s that ``fm-spark train`` itself reports (Petastorm
feed, epoch timing) next to the per-field-pair loop on the same shapes.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fm_spark.config import TrainSpec
from fm_spark.data.reader import Batch
from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model, ffm_kernel
from fm_spark.models.reference import OneGatherFFM, TextbookFFM
from fm_spark.train.factory import make_optimizers
from fm_spark.train.step import StepFn

BATCH = 4096
EMBED_DIMS = (4, 8, 16)
MODELS = ("lr", "poly2", "fm", "fwfm", "ffm")
# Criteo-like: 13 count fields after log-binning (tens of bins) and 26 categorical fields after
# min-count vocabularies, from a handful of values up to 100k.
NUMERIC_SIZES = [45, 100, 80, 40, 200, 90, 70, 60, 100, 10, 40, 60, 50]
CATEGORICAL_SIZES = [
    1_400, 550, 100_000, 60_000, 300, 25, 12_000, 630, 5, 40_000, 5_500, 90_000, 3_200,
    30, 13_000, 70_000, 12, 5_000, 2_000, 6, 80_000, 20, 16, 35_000, 80, 25_000,
]  # fmt: skip
FIELD_SIZES = NUMERIC_SIZES + CATEGORICAL_SIZES
GOAL_FFM_VS_LOOP = 10.0
GOAL_FM = 200_000


def log(message: str) -> None:
    print(f"[bench models] {message}", file=sys.stderr, flush=True)


def _batches(fmap: FeatureMap, device: torch.device, count: int) -> list[Batch]:
    """Skewed ids (local id = size * u^3), like the head-heavy value counts of real logs."""
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor(fmap.field_offsets)
    sizes = torch.tensor(fmap.field_sizes)
    out = []
    for _ in range(count):
        u = torch.rand(BATCH, fmap.num_columns, generator=g)
        ids = offsets + (u.pow(3) * sizes).long().clamp_max(sizes - 1)
        labels = (torch.rand(BATCH, generator=g) < 0.25).float()
        out.append(Batch(ids.to(device), None, labels.to(device)))
    return out


# -- memory -------------------------------------------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _trim() -> None:
    """Give freed heap back to the OS so the next configuration's baseline is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _PeakRSS:
    """Samples this process's RSS every few ms while it is open: peak above the start."""

    def __init__(self) -> None:
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.003):
            self.peak = max(self.peak, _rss())

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return (max(self.peak, _rss()) - self.start) / 2**20


# -- timing -------------------------------------------------------------------------------------
class _Stepper:
    """One model and its optimizers behind the training step function; times whole steps."""

    def __init__(
        self, model: nn.Module, device: torch.device, batches: list[Batch], row_updates: bool
    ) -> None:
        self.model = model.to(device)
        spec = TrainSpec(optimizer="adam", lr=1e-3)
        if row_updates:
            opts = make_optimizers(self.model, spec)
        else:  # the references: sparse COO gradients and SparseAdam, the rest dense Adam
            sparse = [m.weight for m in self.model.modules() if isinstance(m, nn.Embedding)]
            ids = {id(p) for p in sparse}
            dense = [p for p in self.model.parameters() if id(p) not in ids]
            opts = [torch.optim.SparseAdam(sparse, lr=1e-3), torch.optim.Adam(dense, lr=1e-3)]
        if not hasattr(self.model, "penalty"):
            self.model.penalty = lambda ids: torch.zeros((), device=ids.device)
        self.step_fn = StepFn(self.model, self.model, opts, device)
        self.device, self.batches, self.i = device, batches, 0

    def step(self) -> float:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.step_fn(batch)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def _time_alternately(
    steppers: list[_Stepper], warmup: int, steps: int, budget_s: float
) -> list[float]:
    """Median step time of each stepper, timed turn by turn (bounded by ``budget_s``)."""
    for _ in range(warmup):
        for s in steppers:
            s.step()
    times: list[list[float]] = [[] for _ in steppers]
    start = time.perf_counter()
    for n in range(steps):
        for s, t in zip(steppers, times, strict=True):
            t.append(s.step())
        if n >= 2 and time.perf_counter() - start > budget_s:
            break
    return [statistics.median(t) for t in times]


def _fmt(samples_per_s: float) -> str:
    return f"{samples_per_s:,.0f}"


def _family(fmap: FeatureMap, dev: torch.device, batches: list, quick: bool) -> list[dict]:
    warmup, steps, budget = (1, 3, 6.0) if quick else (2, 8, 15.0)
    out = []
    for name in MODELS:
        for k in EMBED_DIMS if name in ("fm", "fwfm", "ffm") else (None,):
            _trim()
            memory = _PeakRSS()
            torch.manual_seed(0)
            hp = {} if k is None else {"embed_dim": k}
            stepper = _Stepper(build_model(name, fmap, sparse=True, **hp), dev, batches, True)
            (t,) = _time_alternately([stepper], warmup, steps, budget)
            mib = memory.close()
            params = sum(p.numel() for p in stepper.model.parameters())
            log(f"{name} k={k}: {t * 1e3:.0f} ms/step, {mib:.0f} MiB")
            out.append({"model": name, "k": k, "t": t, "mib": mib, "params": params})
            del stepper
    return out


def _ffm_references(fmap: FeatureMap, dev: torch.device, batches: list, quick: bool) -> list:
    warmup, steps, budget = (1, 3, 20.0) if quick else (1, 5, 60.0)
    out = []
    for k in (4,):
        _trim()
        torch.manual_seed(0)
        ffm = build_model("ffm", fmap, sparse=True, embed_dim=k)
        old = build_model("ffm", fmap, sparse=True, embed_dim=k)
        old.use_kernel = False
        old.load_state_dict(ffm.state_dict())
        steppers = [
            _Stepper(ffm, dev, batches, True),
            _Stepper(old, dev, batches, False),
            _Stepper(OneGatherFFM(ffm), dev, batches, False),
            _Stepper(TextbookFFM.from_ffm(ffm), dev, batches, False),
        ]
        times = _time_alternately(steppers, warmup, steps, budget)
        log(f"ffm k={k}: " + ", ".join(f"{t * 1e3:.0f} ms" for t in times))
        out.append({"k": k, "times": times})
        del steppers, ffm, old
    return out


def _ddp(quick: bool) -> list[dict[str, Any]]:
    from fm_spark.bench.row_ddp import DDPRun, run_workers

    sizes = [min(s, 20_000) for s in FIELD_SIZES]
    steps, warmup = (3, 1) if quick else (8, 2)
    base = {"model": "fm", "hparams": {"embed_dim": 8}, "batch": BATCH, "steps": steps}
    rows = []
    for label, world, scale in (("1 worker", 1, 1), ("2 workers", 2, 1), ("2 workers", 2, 50)):
        run = DDPRun(
            base["model"],
            [s * scale for s in sizes],
            base["hparams"],
            {"optimizer": "adam", "lr": 1e-3},
            batch=BATCH,
            steps=steps,
            warmup=warmup,
            draw_sizes=sizes,
        )
        results = run_workers(run, world)
        features = sum(run.field_sizes)
        rows.append(
            {
                "label": label,
                "features": features,
                "table_bytes": features * (8 + 1) * 4,
                "samples_per_s": min(r["samples_per_s"] for r in results),
                "bytes_per_step": results[0]["bytes_per_step"],
                "peak_rss": max(r["peak_rss"] for r in results) / 2**20,
            }
        )
        log(f"ddp {label} {features:,} features: {rows[-1]}")
    return rows


def _as_trained(quick: bool) -> dict[str, Any]:
    """``fm-spark train``'s own samples/s for FFM k=4, and the loop on the same shapes."""
    from fm_spark.config import parse_config
    from fm_spark.datagen import write_planted_dataset
    from fm_spark.train.run import train

    rows = 60_000 if quick else 240_000
    names = [f"f{i}" for i in range(len(FIELD_SIZES))]
    with tempfile.TemporaryDirectory(prefix="fm-spark-bench-") as tmp:
        data = Path(tmp) / "data"
        write_planted_dataset(
            data,
            rows={"train": rows, "valid": 8_192, "test": 8_192},
            field_sizes=FIELD_SIZES,
            row_group_rows=20_000,
            seed=5,
        )
        cfg = parse_config(
            {
                "name": "bench",
                "input": {"format": "parquet", "columns": ["label", *names]},
                "fields": [{"name": n, "kind": "categorical", "encoding": "hash"} for n in names],
                "train": {"epochs": 1, "batch_size": BATCH, "device": "cpu",
                          "log_every_steps": 10_000, "shuffle_buffer": 50_000},
                "models": {"ffm": {"embed_dim": 4}},
            }
        )  # fmt: skip
        result = train(cfg, str(data), "ffm", Path(tmp) / "run")
        fmap = FeatureMap.load(data)
        batches = _batches(fmap, torch.device("cpu"), 3)
        torch.manual_seed(0)
        loop = _Stepper(
            TextbookFFM.from_ffm(build_model("ffm", fmap, sparse=True, embed_dim=4)),
            torch.device("cpu"),
            batches,
            False,
        )
        (t,) = _time_alternately([loop], 1, 3, 30.0)
    return {"train": result["train_samples_per_s"], "loop": BATCH / t, "rows": rows}


def run(device: str = "cpu", quick: bool = False) -> str:
    dev = torch.device(device)
    fmap = FeatureMap.synthetic(FIELD_SIZES, dataset="criteo-like")
    batches = _batches(fmap, dev, count=4)
    kernel = dev.type == "cpu" and ffm_kernel.available()
    family = _family(fmap, dev, batches, quick)
    refs = _ffm_references(fmap, dev, batches, quick)
    ddp = _ddp(quick) if dev.type == "cpu" else []
    trained = _as_trained(quick) if dev.type == "cpu" else None
    return _markdown(device, fmap, family, refs, ddp, trained, kernel, quick)


def _markdown(
    device: str,
    fmap: FeatureMap,
    family: list[dict],
    refs: list[dict],
    ddp: list[dict],
    trained: dict | None,
    kernel: bool,
    quick: bool,
) -> str:
    mode = "bf16 autocast" if device.startswith("cuda") else "float32"
    head = " | ".join(f"k={k}" for k in EMBED_DIMS)
    lines = [
        "## models",
        "",
        "Command: `.venv/bin/python -m fm_spark.bench --sections models --out /tmp/m.md`"
        + (" (`--quick`)" if quick else "")
        + ", merged here.",
        "",
        f"Whole training steps (samples/s, higher is better) on `{device}` ({mode}), the path",
        "training uses: `StepFn` (forward, BCE + L2, backward, optimizer) with the fused row",
        "update of the tables (`RowOptimizer`, lazy Adam) and dense Adam for the rest"
        + (", FFM's pair term in its C++ kernel." if kernel else "; FFM in torch ops."),
        f"Batch {BATCH:,}, {fmap.num_fields} fields ({len(NUMERIC_SIZES)} binned numeric of 10-200",
        f"ids, {len(CATEGORICAL_SIZES)} categorical of 5-100k; {fmap.num_features:,} features),",
        "skewed ids; median of timed steps after warm-up. Memory: peak RSS growth while the",
        "model was built and stepped (tables, optimizer state, step temporaries).",
        "",
        f"| model | {head} | peak MiB ({' / '.join(f'k={k}' for k in EMBED_DIMS)}) |",
        "|---|" + "---:|" * len(EMBED_DIMS) + "---:|",
    ]
    for name in MODELS:
        cells = [r for r in family if r["model"] == name]
        speeds = [_fmt(BATCH / r["t"]) for r in cells]
        mems = [f"{r['mib']:,.0f}" for r in cells]
        if len(cells) == 1:
            speeds *= len(EMBED_DIMS)
        note = " (no k)" if name in ("lr", "poly2") else ""
        lines.append(f"| {name}{note} | {' | '.join(speeds)} | {' / '.join(mems)} |")
    fm = max(BATCH / r["t"] for r in family if r["model"] == "fm")
    lines += [
        "",
        f"Goal FM >= {GOAL_FM:,} samples/s: best FM {_fmt(fm)} "
        f"({'met' if fm >= GOAL_FM else 'not met'}). POLY2 uses `hash_bits=18`.",
        "",
        "### FFM against the references (same run, timed alternately)",
        "",
        "| k | this FFM (training path) | this FFM, torch ops + `SparseAdam` (before) | "
        "one-gather (FuxiCTR FFMv2) + `SparseAdam` | per-field-pair loop + `SparseAdam` | "
        "vs loop |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in refs:
        t = r["times"]
        cells = " | ".join(f"{_fmt(BATCH / x)} ({x * 1e3:,.0f} ms)" for x in t)
        lines.append(f"| {r['k']} | {cells} | **{t[3] / t[0]:.1f}x** |")
    ratio = refs[0]["times"][3] / refs[0]["times"][0]
    lines += [
        "",
        f"Goal: FFM whole step >= {GOAL_FFM_VS_LOOP:.0f}x the per-field-pair loop (k=4): "
        f"{ratio:.1f}x ({'met' if ratio >= GOAL_FFM_VS_LOOP else 'not met'}).",
    ]
    if ddp:
        lines += [
            "",
            "### DDP: sparse tables through the row all-gather",
            "",
            f"FM k=8, global batch {BATCH:,}, gloo on this machine, one intra-op thread per",
            "worker; both table sizes see the same ids (`fm_spark/bench/row_ddp.py`). Bytes:",
            "what the all-gathers moved per step, all workers' padded (ids, row gradients).",
            "",
            "| workers | features | table MiB (linear + factors) | row exchange bytes/step | "
            "samples/s | peak RSS MiB per worker |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in ddp:
            lines.append(
                f"| {r['label']} | {r['features']:,} | {r['table_bytes'] / 2**20:,.0f} | "
                f"{r['bytes_per_step']:,.0f} | {_fmt(r['samples_per_s'])} | {r['peak_rss']:,.0f} |"
            )
        two = [r for r in ddp if r["label"] == "2 workers"]
        same = len(two) == 2 and two[0]["bytes_per_step"] == two[1]["bytes_per_step"]
        lines += [
            "",
            f"Goal: DDP traffic independent of table size: {'met' if same else 'not met'} "
            f"({two[0]['bytes_per_step']:,.0f} vs {two[-1]['bytes_per_step']:,.0f} bytes/step "
            f"for a {two[-1]['features'] / two[0]['features']:.0f}x larger table).",
        ]
    if trained:
        lines += [
            "",
            "### As `fm-spark train` reports it",
            "",
            f"`train()` (what `fm-spark train` runs) of FFM k=4, batch {BATCH:,}, one worker, one",
            f"epoch over {trained['rows']:,} planted rows with these 39 fields (Petastorm feed):",
            f"**{_fmt(trained['train'])} samples/s** (`train_samples_per_s`); the per-field-pair",
            f"loop on the same shapes right after: {_fmt(trained['loop'])} samples/s "
            f"(**{trained['train'] / trained['loop']:.1f}x**).",
        ]
    lines += [
        "",
        "No GPU was lent to this work: the CUDA path (bf16 autocast of the forward, fp32 master",
        "weights and optimizer state, pinned non-blocking copies; FFM in torch ops there) is",
        "device-generic code that the CPU tests exercise, not measured here.",
    ]
    return "\n".join(lines) + "\n"
