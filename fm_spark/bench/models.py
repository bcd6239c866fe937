"""Training-step throughput of the FM family, and vectorised FFM against the textbook loop.

One step = forward + ``BCEWithLogitsLoss`` + backward + optimiser step, on a Criteo-shaped
input (39 fields, batch 4096). Each configuration runs warm-up steps first, then timed steps;
the reported figure is ``batch / median step time``. Vectorised and textbook FFM are timed
alternately, step by step, so that load from other processes hits both alike.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from fm_spark.features.feature_map import FeatureMap
from fm_spark.models import build_model
from fm_spark.models.reference import TextbookFFM

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
# (embed_dim, fused Adam) for the vectorised-vs-textbook FFM comparison.
RATIO_CONFIGS = ((4, False), (4, True))


def _batches(fmap: FeatureMap, device: torch.device, count: int) -> list[tuple[Tensor, Tensor]]:
    """Skewed ids (local id = size * u^3), like the head-heavy value counts of real logs."""
    g = torch.Generator().manual_seed(0)
    offsets = torch.tensor(fmap.field_offsets)
    sizes = torch.tensor(fmap.field_sizes)
    out = []
    for _ in range(count):
        u = torch.rand(BATCH, fmap.num_columns, generator=g)
        ids = offsets + (u.pow(3) * sizes).long().clamp_max(sizes - 1)
        labels = (torch.rand(BATCH, generator=g) < 0.25).float()
        out.append((ids.to(device), labels.to(device)))
    return out


class _Stepper:
    """One model, its Adam and a step function that returns the step's wall time."""

    def __init__(
        self, model: nn.Module, device: torch.device, batches: list, fused: bool = False
    ) -> None:
        self.model = model.to(device)
        # fused=None is torch's default (the per-tensor loop on CPU); True is one kernel.
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=fused or None)
        self.loss = nn.BCEWithLogitsLoss()
        self.device = device
        self.batches = batches
        self.i = 0

    def _autocast(self) -> AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self) -> tuple[float, float]:
        """Wall time of (forward + backward, whole step)."""
        ids, labels = self.batches[self.i % len(self.batches)]
        self.i += 1
        self._sync()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss(self.model(ids).float(), labels)
        loss.backward()
        self._sync()
        backward_done = time.perf_counter()
        self.opt.step()
        self._sync()
        end = time.perf_counter()
        return backward_done - start, end - start


def _time_alternately(
    steppers: list[_Stepper], warmup: int, steps: int, budget_s: float
) -> list[tuple[float, float]]:
    """Median (forward + backward, step) time of each stepper, timed turn by turn.

    Warm-up stops after one step if that step alone took a fifth of the budget, and timed steps
    stop once the budget is spent (after at least two), so slow configurations stay bounded.
    """
    for _ in range(warmup):
        start = time.perf_counter()
        for s in steppers:
            s.step()
        if time.perf_counter() - start > budget_s / 5:
            break
    times: list[list[tuple[float, float]]] = [[] for _ in steppers]
    start = time.perf_counter()
    for n in range(steps):
        for s, t in zip(steppers, times, strict=True):
            t.append(s.step())
        if n >= 1 and time.perf_counter() - start > budget_s:
            break
    return [(statistics.median(f for f, _ in t), statistics.median(w for _, w in t)) for t in times]


def log(message: str) -> None:
    print(f"[bench models] {message}", file=sys.stderr, flush=True)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fmt(samples_per_s: float) -> str:
    return f"{samples_per_s:,.0f}"


def _millions(model: nn.Module) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:,.1f}M"


def run(device: str = "cpu", quick: bool = False) -> str:
    dev = torch.device(device)
    fmap = FeatureMap.synthetic(FIELD_SIZES, dataset="criteo-like")
    batches = _batches(fmap, dev, count=4)
    warmup, steps, budget = (1, 2, 8.0) if quick else (2, 5, 15.0)

    # -- all models, each embedding size --------------------------------------------------------
    rows: dict[str, list[str]] = {}
    sizes: dict[str, list[str]] = {}
    for name in MODELS:
        dims = EMBED_DIMS if name in ("fm", "fwfm", "ffm") else (None,)
        for k in dims:
            torch.manual_seed(0)
            hp = {} if k is None else {"embed_dim": k}
            stepper = _Stepper(build_model(name, fmap, **hp), dev, batches)
            ((_, t),) = _time_alternately([stepper], warmup, steps, budget)
            log(f"{name} k={k}: {t * 1e3:.0f} ms/step")
            cell = _fmt(BATCH / t)
            rows.setdefault(name, []).extend([cell] * (len(EMBED_DIMS) if k is None else 1))
            sizes.setdefault(name, []).append(_millions(stepper.model))
            del stepper
            _free()

    # -- vectorised FFM against the textbook per-field-pair loop ----------------------------------
    ratios = []
    for k, fused in RATIO_CONFIGS:
        torch.manual_seed(0)
        ffm = build_model("ffm", fmap, embed_dim=k)
        textbook = TextbookFFM.from_ffm(ffm)
        vec = _Stepper(ffm, dev, batches, fused=fused)
        ref = _Stepper(textbook, dev, batches, fused=fused)
        (fb_vec, t_vec), (fb_ref, t_ref) = _time_alternately(
            [vec, ref], warmup=warmup, steps=steps, budget_s=budget
        )
        log(
            f"ffm k={k} fused={fused}: vectorised {t_vec * 1e3:.0f} ms, "
            f"textbook {t_ref * 1e3:.0f} ms"
        )
        optimizer = "`Adam(fused=True)`" if fused else "`Adam` (default)"
        ratios.append((k, optimizer, fb_vec, t_vec, fb_ref, t_ref))
        del vec, ref, ffm, textbook
        _free()

    mode = "bf16 autocast" if dev.type == "cuda" else "float32"
    head = " | ".join(f"k={k}" for k in EMBED_DIMS)
    lines = [
        "## models",
        "",
        f"Training-step throughput (samples/s, higher is better) on `{device}` ({mode}): forward",
        "+ `BCEWithLogitsLoss` + backward + `torch.optim.Adam` step, batch "
        f"{BATCH:,}, {fmap.num_fields} fields",
        f"({len(NUMERIC_SIZES)} binned numeric fields of 10-200 ids, {len(CATEGORICAL_SIZES)} "
        f"categorical of 5-100k ids; {fmap.num_features:,} features), skewed ids.",
        f"Median of up to {steps} timed steps after {warmup} warm-up steps.",
        "Tables are dense (`sparse=False`): Adam updates every row of every table each step,",
        "which dominates for FFM at large k (its table is features x fields x k).",
        "",
        f"| model | {head} | parameters ({' / '.join(f'k={k}' for k in EMBED_DIMS)}) |",
        "|---|" + "---:|" * len(EMBED_DIMS) + "---:|",
    ]
    for name in MODELS:
        note = " (no k)" if name in ("lr", "poly2") else ""
        lines.append(f"| {name}{note} | {' | '.join(rows[name])} | {' / '.join(sizes[name])} |")
    lines += [
        "",
        "POLY2 uses `hash_bits=18`; LR and POLY2 have no embeddings, so one measurement fills",
        "their row.",
        "",
        "### FFM: vectorised vs textbook per-field-pair loop",
        "",
        "The textbook form (`fm_spark.models.reference.TextbookFFM`) is one `nn.Embedding` per",
        "field and a Python loop over the 741 field pairs, as in libffm and pytorch-fm; it holds",
        "the same parameters. Both are timed alternately in the same run.",
        "",
        "| k | optimiser | | vectorised | textbook | speed-up |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for k, optimizer, fb_vec, t_vec, fb_ref, t_ref in ratios:
        lines += [
            f"| {k} | {optimizer} | whole step, samples/s | {_fmt(BATCH / t_vec)} | "
            f"{_fmt(BATCH / t_ref)} | **{t_ref / t_vec:.1f}x** |",
            f"| {k} | {optimizer} | whole step, ms | {t_vec * 1e3:,.0f} | {t_ref * 1e3:,.0f} | |",
            f"| {k} | {optimizer} | of which forward + backward, ms | {fb_vec * 1e3:,.0f} | "
            f"{fb_ref * 1e3:,.0f} | {fb_ref / fb_vec:.1f}x |",
            f"| {k} | {optimizer} | of which the rest (optimiser step), ms | "
            f"{(t_vec - fb_vec) * 1e3:,.0f} | {(t_ref - fb_ref) * 1e3:,.0f} | |",
        ]
    lines += [
        "",
        "Both hold the same parameters (one table of width fields x k, or one table of width k",
        "per field), so the dense Adam update is the same arithmetic on both sides and bounds",
        "the whole-step speed-up; the forward + backward row is the speed-up of the model",
        "computation itself. The optimiser row is the difference of the two medians. torch's",
        "default CPU Adam makes several full passes over the table per step, `fused=True` one:",
        "the whole-step speed-up depends on that choice as much as on the model.",
    ]
    return "\n".join(lines) + "\n"
