"""Synthetic click logs drawn from a planted model, with the ground truth written beside them.

A trained CTR model can only be judged "good" against the best score that is possible on its
data. Real logs never tell us that; a log whose labels are drawn from a known model does: the
planted click probability of every row is written out, so tests can compare a trained model's
AUC and logloss with the oracle's instead of with a magic threshold.

Two formats share the machinery: ``criteo`` (Criteo's 39 fields, no header; the benchmarks'
log) and ``context`` (a 12-field ad-context log with a header, whose planted model 1e5 rows
determine almost whole; ``make demo``'s log). The planted model is built to look like the data
the pipeline is meant for, and to reward the models it trains:

* categorical values follow Zipf-like frequencies over per-field cardinalities (Criteo: 3 to 30k),
  so vocabulary cut-offs (``min_count``) and rare values behave as on real logs;
* integer counts are log-normal with zeros, negatives (Criteo's I2) and missing values, and act
  on the label through the same ``floor(ln(x)^2)`` bins the feature job builds;
* on top of the per-value weights sit FFM-style field-aware interactions between mid-cardinality
  categorical fields. They are centred, so no linear model can see them: the AUC gap between
  logistic regression and the oracle is what interactions are worth, and an FM/FFM must close
  part of it to earn its keep.

Malformed lines of every kind the feature job quarantines can be mixed in; each is broken in
exactly one way so tests can count quarantined rows per reason.

Everything is vectorised (loops run over fields and over the few bad lines, never over rows),
and text is rendered by Arrow's CSV writer, so a million rows take a few seconds.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from fm_spark.features.feature_map import FeatureMap
from fm_spark.features.spec import BAD_INT, BAD_LABEL, UNDECODABLE, WRONG_COLUMN_COUNT
from fm_spark.features.spec import log_bin as _spec_log_bin
from fm_spark.train.metrics import log_loss, roc_auc

BAD_KINDS = (WRONG_COLUMN_COUNT, BAD_LABEL, BAD_INT, UNDECODABLE)
TRUTH_SUFFIX = ".truth"
META_SUFFIX = ".meta.json"

# Rows rendered per Arrow call: bounds the memory of the text buffers, not the result.
_RENDER_CHUNK = 250_000
# Probabilities are written with 6 decimals; clipping keeps every one strictly inside (0, 1),
# so the oracle's logloss is finite and the truth file round-trips exactly.
_PROB_SCALE = 1_000_000
_TARGET_POSITIVE_RATE = 0.25
_CALIBRATION_ROWS = 100_000


# --------------------------------------------------------------------------------------------
# planted model
# --------------------------------------------------------------------------------------------


@dataclass
class _CategoricalField:
    name: str
    cardinality: int
    zipf_exponent: float
    missing_rate: float
    weight_scale: float
    probs: np.ndarray  # P(value | present), in rank order (value index = rank)
    weights: np.ndarray  # [cardinality + 1]; the last entry is the weight of "missing"
    tokens: pa.Array  # [cardinality] strings, the raw value written to the log


@dataclass
class _IntegerField:
    name: str
    missing_rate: float
    zero_rate: float
    negative_rate: float
    log_mu: float
    log_sigma: float
    bin_weights: np.ndarray  # indexed by log bin + _BIN_OFFSET
    missing_weight: float


@dataclass
class _Interaction:
    """One field pair of the FFM-style term: <v_a[x_a, b], v_b[x_b, a]>."""

    a: int  # categorical field indices
    b: int
    # Stored [dim, card + 1] (the last column, "missing", is zero): gathering one row per
    # latent dimension is ~5x faster than gathering [n, dim] blocks.
    va: np.ndarray
    vb: np.ndarray


@dataclass
class _Sample:
    """Raw field values of n rows, field-major so each field's column is contiguous."""

    cat: np.ndarray  # [n_cat, n] int32 value index; == cardinality means missing
    ints: np.ndarray  # [n_int, n] int64 (0 where missing)
    int_missing: np.ndarray  # [n_int, n] bool

    @property
    def rows(self) -> int:
        return self.cat.shape[1]

    def slice(self, start: int, stop: int) -> _Sample:
        return _Sample(
            self.cat[:, start:stop], self.ints[:, start:stop], self.int_missing[:, start:stop]
        )


_BIN_OFFSET = 8  # negatives down to -8 get their own bin weight
_MAX_BIN = 480  # floor(ln(2**31)^2) = 461


def log_bin(x: np.ndarray) -> np.ndarray:
    """Criteo winners' count binning, ``x if x <= 2 else floor(ln(x)^2)``.

    The planted integer weights act on these bins rather than on raw counts because that is
    what the feature job's ``log_bins`` encoding hands the models: a model can then in
    principle recover the planted effect exactly.
    """
    return _spec_log_bin(np.asarray(x, dtype=np.int64))  # the feature job's rule


@dataclass
class _PlantedModel:
    bias: float
    categorical: list[_CategoricalField]
    integer: list[_IntegerField]
    interactions: list[_Interaction]
    dim: int
    interaction_scale: float
    token_scheme: str
    interaction_cardinality: tuple[int, int]  # the fields the pairs were drawn among

    def sample(self, rng: np.random.Generator, n: int) -> _Sample:
        cat = np.empty((len(self.categorical), n), dtype=np.int32)
        for i, f in enumerate(self.categorical):
            # One uniform per cell decides "missing" and, rescaled, the value's rank.
            u = rng.random(n)
            present = u >= f.missing_rate
            rank = _zipf_rank((u - f.missing_rate) / (1.0 - f.missing_rate), f)
            cat[i] = np.where(present, rank, f.cardinality)
        ints = np.empty((len(self.integer), n), dtype=np.int64)
        missing = np.empty((len(self.integer), n), dtype=bool)
        for j, g in enumerate(self.integer):
            # One uniform picks the cell's state: missing | zero | negative | positive count.
            u = rng.random(n)
            zero_at = g.missing_rate + (1.0 - g.missing_rate) * g.zero_rate
            neg_at = zero_at + (1.0 - g.missing_rate) * g.negative_rate
            v = np.floor(np.exp(rng.normal(g.log_mu, g.log_sigma, n)))
            v = np.minimum(v, 2**31 - 1).astype(np.int64)
            v[u < zero_at] = 0
            if g.negative_rate > 0:
                neg = (u >= zero_at) & (u < neg_at)
                v[neg] = -1 - ((u[neg] - zero_at) / (neg_at - zero_at) * 3).astype(np.int64)
            missing[j] = u < g.missing_rate
            ints[j] = v
        return _Sample(cat, ints, missing)

    def logit_parts(self, s: _Sample) -> tuple[np.ndarray, np.ndarray]:
        """Main effects (without bias) and interaction term, kept apart for diagnostics."""
        main = np.zeros(s.rows, dtype=np.float64)
        for i, f in enumerate(self.categorical):
            main += f.weights[s.cat[i]]
        for j, g in enumerate(self.integer):
            b = np.clip(log_bin(s.ints[j]), -_BIN_OFFSET, _MAX_BIN) + _BIN_OFFSET
            main += np.where(s.int_missing[j], g.missing_weight, g.bin_weights[b])
        inter = np.zeros(s.rows, dtype=np.float64)
        for it in self.interactions:
            xa, xb = s.cat[it.a], s.cat[it.b]
            for k in range(self.dim):
                inter += it.va[k][xa] * it.vb[k][xb]
        return main, inter

    def summary(self) -> dict[str, Any]:
        r = _round
        return {
            "bias": r(self.bias),
            "target_positive_rate": _TARGET_POSITIVE_RATE,
            "categorical_fields": [
                {
                    "name": f.name,
                    "cardinality": f.cardinality,
                    "zipf_exponent": r(f.zipf_exponent),
                    "missing_rate": r(f.missing_rate),
                    "weight_scale": r(f.weight_scale),
                }
                for f in self.categorical
            ],
            "value_weight_tail_shrink": f"(1 + rank / {_TAIL_RANK:g}) ** -{_TAIL_SHRINK:g}",
            "total_cardinality": int(sum(f.cardinality for f in self.categorical)),
            "integer_fields": [
                {
                    "name": g.name,
                    "missing_rate": r(g.missing_rate),
                    "zero_rate": r(g.zero_rate),
                    "negative_rate": r(g.negative_rate),
                    "lognormal_mu": r(g.log_mu),
                    "lognormal_sigma": r(g.log_sigma),
                }
                for g in self.integer
            ],
            "integer_binning": "x if x <= 2 else floor(ln(x)^2)",
            "interactions": {
                "kind": "field-aware (FFM), centred: invisible to a linear model",
                "dim": self.dim,
                "scale": r(self.interaction_scale),
                "field_cardinality_range": list(self.interaction_cardinality),
                "pairs": [
                    [self.categorical[it.a].name, self.categorical[it.b].name]
                    for it in self.interactions
                ],
            },
            "token_scheme": self.token_scheme,
        }


def _round(x: float) -> float:
    return round(float(x), 6)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _pareto_cdf(x: np.ndarray, cardinality: int, exponent: float) -> np.ndarray:
    """CDF of a power law with density ~ x^-exponent, truncated to [1, cardinality + 1]."""
    a = 1.0 - exponent
    return (1.0 - x**a) / (1.0 - (cardinality + 1.0) ** a)


def _zipf_probs(cardinality: int, exponent: float) -> np.ndarray:
    edges = np.arange(1, cardinality + 2, dtype=np.float64)
    return np.diff(_pareto_cdf(edges, cardinality, exponent))


def _zipf_rank(u: np.ndarray, f: _CategoricalField) -> np.ndarray:
    """Ranks with Zipf-like frequencies: floor of a truncated continuous power law.

    Its inverse CDF is closed-form, so a draw costs one ``pow`` instead of a binary search
    over the field's cumulative table (3x faster on the large fields); the discrete
    probabilities it induces are exactly ``_zipf_probs``.
    """
    a = 1.0 - f.zipf_exponent
    x = (1.0 - u * (1.0 - (f.cardinality + 1.0) ** a)) ** (1.0 / a)
    return np.clip(x.astype(np.int64) - 1, 0, f.cardinality - 1).astype(np.int32)


def _hex_tokens(rng: np.random.Generator, cardinality: int) -> pa.Array:
    """8-hex-char tokens, distinct within a field, unrelated to the value's frequency rank.

    murmur3's finaliser is a bijection on 32-bit integers, so (rank + a per-field random key)
    through it never collides inside a field, unlike a truncated hash.
    """
    key = np.uint32(rng.integers(0, 2**32))
    h = np.arange(cardinality, dtype=np.uint32) + key  # wraps mod 2**32
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    nibbles = (h[:, None] >> shifts[None, :]) & np.uint32(0xF)
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    return pa.array(np.ascontiguousarray(chars).view("S8").ravel()).cast(pa.string())


def _calibrate_bias(z: np.ndarray, target: float) -> float:
    """Bias b with mean(sigmoid(b + z)) == target, by bisection (monotone in b)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _sigmoid(mid + z).mean() < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------


class _Format(Protocol):
    """What a log format supplies; everything else (labels, bad-line placement, truth, meta,
    atomic writes) is shared, so a new format (Avazu CSV) only adds one of these."""

    name: str
    num_columns: int
    header: bytes | None

    def build_model(
        self, rng: np.random.Generator, calib_rng: np.random.Generator
    ) -> _PlantedModel:
        """The planted model, its value distributions and how values are spelled."""
        ...

    def render(self, model: _PlantedModel, sample: _Sample, labels: np.ndarray) -> pa.Buffer:
        """Good lines, each ending with a newline, in row order."""
        ...

    def corrupt(self, line: bytes, kind: str, draws: np.ndarray, model: _PlantedModel) -> bytes:
        """Break a good line in exactly one way (``kind``); ``draws`` are its random ints."""
        ...


# Criteo's cardinality profile, compressed so that FFM can learn from 1e5-1e6 rows: a mix of
# tiny, mid and large fields spread over the 26 columns (about 114k values in all).
_CRITEO_CARDINALITIES = (
    1000, 500, 20000, 8000, 200, 20, 5000, 400, 3, 15000, 2500, 12000, 1500,
    40, 800, 10000, 10, 3000, 1200, 4, 30000, 12, 50, 2000, 25, 600,
)  # fmt: skip
# Fields that are often empty in the real data (C19, C20, C22, C25, C26).
_CRITEO_SPARSE_FIELDS = {18: 0.42, 19: 0.42, 21: 0.75, 24: 0.44, 25: 0.44}
# Integer fields: (missing rate, zero rate, lognormal mu, lognormal sigma), after Criteo I1-I13.
_CRITEO_INTEGERS = (
    (0.45, 0.35, 0.8, 1.2),
    (0.00, 0.20, 2.5, 2.0),  # I2: also small negatives
    (0.20, 0.05, 2.5, 1.5),
    (0.22, 0.05, 1.8, 1.0),
    (0.03, 0.02, 7.5, 2.0),
    (0.22, 0.15, 4.0, 1.8),
    (0.04, 0.20, 2.0, 1.5),
    (0.01, 0.05, 2.5, 0.9),
    (0.04, 0.02, 3.8, 1.3),
    (0.45, 0.40, 0.3, 0.6),
    (0.04, 0.20, 1.0, 1.0),
    (0.77, 0.50, 0.5, 1.2),
    (0.22, 0.05, 2.0, 1.2),
)
_I2_NEGATIVE_RATE = 0.03
_INTERACTION_DIM = 4
_TAIL_RANK = 50.0
_TAIL_SHRINK = 0.3

_BAD_LABELS = (b"2", b"x", b"", b"-1", b"10", b"click")
# Strings that no integer parser accepts. "3.5" matters: a lenient cast (Spark's non-ANSI
# cast('3.5' as int) == 3) would let it through, so the feature job must validate the text.
_BAD_INTS = (b"12abc", b"3.5", b"abc", b"1e3", b"0x1f", b"--2", b"7-")
# Byte sequences that are not UTF-8: lone continuation, bad lead bytes, truncated sequence.
_BAD_BYTES = (b"\xff\xfe", b"\x80", b"\xfe\xff\xfd", b"\xc3\x28")


class _TabFormat:
    """A tab-separated log ``label, integer fields..., categorical fields...`` drawn from a
    planted model: per-value weights, binned integer counts and field-aware interactions.

    Subclasses set the shape (fields, cardinalities, scales); the drawing, rendering and
    corruption are shared, so each format's log comes from the same kind of model.
    """

    name: str
    has_header: bool = False  # a first line naming the columns
    cat_names: tuple[str, ...]
    cardinalities: tuple[int, ...]
    sparse_fields: ClassVar[dict[int, float]] = {}
    int_names: tuple[str, ...]
    integers: tuple[tuple[float, float, float, float], ...]
    negative_int: int | None = None  # the integer field that also has small negatives
    # Interactions live between fields of this cardinality range (values frequent enough for
    # a factorised model to learn their vectors), ``interaction_pairs`` of them.
    interaction_cardinality: tuple[int, int]
    interaction_pairs: int
    interaction_scale: float
    cat_weight_scale: float
    int_weight_scale: float

    @property
    def num_columns(self) -> int:
        return 1 + len(self.int_names) + len(self.cat_names)

    @property
    def header(self) -> bytes | None:
        if not self.has_header:
            return None
        return ("\t".join(("label", *self.int_names, *self.cat_names)) + "\n").encode()

    def build_model(
        self, rng: np.random.Generator, calib_rng: np.random.Generator
    ) -> _PlantedModel:
        cats: list[_CategoricalField] = []
        for i, (name, card) in enumerate(zip(self.cat_names, self.cardinalities, strict=True)):
            exponent = float(rng.uniform(1.05, 1.3))
            missing = self.sparse_fields.get(i, float(rng.uniform(0.002, 0.04)))
            scale = self.cat_weight_scale * float(rng.uniform(0.4, 1.6))
            # Rare values carry less signal each (their weights shrink down the tail), as
            # on real logs; otherwise the oracle's edge would be mostly unlearnable noise.
            shrink = (1.0 + np.arange(card + 1) / _TAIL_RANK) ** -_TAIL_SHRINK
            shrink[-1] = 1.0  # "missing" is a common value
            weights = rng.normal(0.0, scale, card + 1) * shrink
            cats.append(
                _CategoricalField(
                    name=name,
                    cardinality=card,
                    zipf_exponent=exponent,
                    missing_rate=missing,
                    weight_scale=scale,
                    probs=_zipf_probs(card, exponent),
                    weights=weights,
                    tokens=_hex_tokens(rng, card),
                )
            )
        ints: list[_IntegerField] = []
        bins = np.arange(-_BIN_OFFSET, _MAX_BIN + 1)
        for j, (name, (missing, zero, mu, sigma)) in enumerate(
            zip(self.int_names, self.integers, strict=True)
        ):
            # A smooth, saturating effect of the count's magnitude (sqrt(bin) ~ ln x), plus a
            # little per-bin noise: the shape a one-weight-per-bin model can fit.
            amp = self.int_weight_scale * float(rng.uniform(0.4, 1.4))
            amp *= float(rng.choice([-1, 1]))
            slope = float(rng.uniform(0.5, 1.5))
            w = amp * np.tanh(slope * (np.sqrt(np.maximum(bins, 0)) - mu))
            w += rng.normal(0.0, 0.05, bins.size)
            w[bins < 0] = rng.normal(0.0, self.int_weight_scale)
            ints.append(
                _IntegerField(
                    name=name,
                    missing_rate=missing,
                    zero_rate=zero,
                    negative_rate=_I2_NEGATIVE_RATE if j == self.negative_int else 0.0,
                    log_mu=mu,
                    log_sigma=sigma,
                    bin_weights=w,
                    missing_weight=float(rng.normal(0.0, self.int_weight_scale)),
                )
            )
        lo, hi = self.interaction_cardinality
        candidates = [i for i, c in enumerate(self.cardinalities) if lo <= c <= hi]
        all_pairs = [(a, b) for k, a in enumerate(candidates) for b in candidates[k + 1 :]]
        chosen = sorted(rng.choice(len(all_pairs), self.interaction_pairs, replace=False))
        interactions = [
            _Interaction(a, b, self._latent(rng, cats[a]), self._latent(rng, cats[b]))
            for a, b in (all_pairs[k] for k in chosen)
        ]
        model = _PlantedModel(
            bias=0.0,
            categorical=cats,
            integer=ints,
            interactions=interactions,
            dim=_INTERACTION_DIM,
            interaction_scale=self.interaction_scale,
            token_scheme="8 hex chars: murmur3 fmix32(value rank + per-field key), seeded",
            interaction_cardinality=self.interaction_cardinality,
        )
        main, inter = model.logit_parts(model.sample(calib_rng, _CALIBRATION_ROWS))
        model.bias = _calibrate_bias(main + inter, _TARGET_POSITIVE_RATE)
        return model

    def _latent(self, rng: np.random.Generator, f: _CategoricalField) -> np.ndarray:
        """Latent vectors centred under the field's value distribution.

        With E[v(x)] = 0 the interaction's conditional mean given either field alone is zero,
        so the term is pure interaction: LR cannot absorb any of it into per-value weights.
        """
        v = rng.normal(0.0, self.interaction_scale, (f.cardinality, _INTERACTION_DIM))
        v -= f.probs @ v
        return np.ascontiguousarray(np.vstack([v, np.zeros((1, _INTERACTION_DIM))]).T)

    def render(self, model: _PlantedModel, sample: _Sample, labels: np.ndarray) -> pa.Buffer:
        columns: dict[str, pa.Array] = {"label": pa.array(labels.astype(np.int8))}
        for j, g in enumerate(model.integer):
            columns[g.name] = pa.array(sample.ints[j], mask=sample.int_missing[j])
        for i, f in enumerate(model.categorical):
            idx = sample.cat[i]
            columns[f.name] = f.tokens.take(pa.array(idx, mask=idx == f.cardinality))
        sink = pa.BufferOutputStream()
        pa_csv.write_csv(
            pa.table(columns),
            sink,
            pa_csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none"),
        )
        return sink.getvalue()

    def corrupt(self, line: bytes, kind: str, draws: np.ndarray, model: _PlantedModel) -> bytes:
        cols = line.split(b"\t")
        n_int, n_cat = len(model.integer), len(model.categorical)
        d = [int(x) for x in draws]
        if kind == WRONG_COLUMN_COUNT:
            # Truncated lines (anything from the label alone to one short) or a few extra
            # columns; the columns that remain stay valid.
            if d[0] % 3:
                cols = cols[: 1 + d[1] % (self.num_columns - 1)]
            else:
                extra = 1 + d[1] % 4
                cols = cols + [
                    b"%08x" % (d[2] % 2**32) if k % 2 == 0 else b"" for k in range(extra)
                ]
        elif kind == BAD_LABEL:
            cols[0] = _BAD_LABELS[d[0] % len(_BAD_LABELS)]
        elif kind == BAD_INT:
            cols[1 + d[0] % n_int] = _BAD_INTS[d[1] % len(_BAD_INTS)]
        elif kind == UNDECODABLE:
            k = 1 + n_int + d[0] % n_cat
            at = d[1] % (len(cols[k]) + 1)
            cols[k] = cols[k][:at] + _BAD_BYTES[d[2] % len(_BAD_BYTES)] + cols[k][at:]
        else:  # pragma: no cover - kinds come from BAD_KINDS
            raise AssertionError(kind)
        return b"\t".join(cols)


class _CriteoFormat(_TabFormat):
    """Criteo's display-ads log: no header, 13 integer counts I1-I13, 26 hashed categorical
    fields C1-C26 with Criteo's mix of cardinalities (compressed, about 114k values), 10
    interacting pairs among the fields of 10-600 values."""

    name = "criteo"
    cat_names = tuple(f"C{i + 1}" for i in range(len(_CRITEO_CARDINALITIES)))
    cardinalities = _CRITEO_CARDINALITIES
    sparse_fields = _CRITEO_SPARSE_FIELDS
    int_names = tuple(f"I{j + 1}" for j in range(len(_CRITEO_INTEGERS)))
    integers = _CRITEO_INTEGERS
    negative_int = 1  # I2
    interaction_cardinality = (10, 600)
    interaction_pairs = 10
    interaction_scale = 0.39
    cat_weight_scale = 0.22
    int_weight_scale = 0.28


class _ContextFormat(_TabFormat):
    """An ad-context log (tab-separated, with a header): who saw which ad, where and when, in
    10 categorical fields of 5-200 values and 2 counts, with 6 interacting field pairs.

    The few-field counterpart of the Criteo shape, which ``make demo`` uses: every value is
    seen often enough in 1e5 rows that the planted model can be learned almost whole, so the
    demo's AUC gap to it measures the model, not the log's size. On the Criteo shape (39
    fields, 114k values) even a model given the 10 planted pairs stays 0.025-0.03 below the
    planted AUC at 200K rows (README, Defaults).
    """

    name = "context"
    has_header = True
    cat_names = (
        "user_segment", "ad", "advertiser", "site_category", "hour", "weekday",
        "device", "os", "country", "slot",
    )  # fmt: skip
    cardinalities = (100, 200, 40, 30, 24, 7, 5, 9, 40, 12)
    int_names = ("clicks_7d", "pageviews")
    integers = ((0.30, 0.50, 0.8, 1.0), (0.05, 0.05, 2.0, 1.2))
    interaction_cardinality = (5, 200)
    interaction_pairs = 6
    interaction_scale = 0.6
    cat_weight_scale = 0.4
    int_weight_scale = 0.28


_FORMATS: dict[str, Callable[[], _Format]] = {"criteo": _CriteoFormat, "context": _ContextFormat}


# --------------------------------------------------------------------------------------------
# metrics: the project's own (fm_spark.train.metrics), so the planted optimum is scored
# exactly as trained models are
# --------------------------------------------------------------------------------------------


def _oracle_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """AUC, or None where it is undefined (one class only): the meta file is strict JSON."""
    value = roc_auc(labels, scores)
    return None if math.isnan(value) else value


def _oracle_logloss(labels: np.ndarray, probs: np.ndarray) -> float | None:
    return log_loss(labels, probs) if np.asarray(labels).size else None


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def _render_truth(micro: np.ndarray) -> bytes:
    """``0.dddddd\\n`` per row, built as a byte matrix: ~50x faster than '%.6f' formatting,
    and identical to it because every value is an exact multiple of 1e-6 in (0, 1)."""
    out = np.empty((micro.size, 9), dtype=np.uint8)
    out[:, 0] = ord("0")
    out[:, 1] = ord(".")
    for k in range(6):
        out[:, 7 - k] = ord("0") + (micro // 10**k) % 10
    out[:, 8] = ord("\n")
    return out.tobytes()


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _finish(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def _write_log(
    f: BinaryIO,
    fmt: _Format,
    model: _PlantedModel,
    sample: _Sample,
    labels: np.ndarray,
    bad_lines: list[bytes],
    bad_after: np.ndarray,
) -> None:
    """Stream good lines chunk by chunk, slipping bad line i in after ``bad_after[i]`` goods."""
    if fmt.header is not None:
        f.write(fmt.header)
    rows = sample.rows
    k = 0  # next bad line
    for start in range(0, max(rows, 1), _RENDER_CHUNK):
        stop = min(start + _RENDER_CHUNK, rows)
        buf = (
            fmt.render(model, sample.slice(start, stop), labels[start:stop])
            if stop > start
            else b""
        )
        view = memoryview(buf)
        ends = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 0x0A) + 1
        last = stop == rows
        pos = 0
        while k < len(bad_lines) and (bad_after[k] < stop or (last and bad_after[k] == stop)):
            cut = int(ends[bad_after[k] - start - 1]) if bad_after[k] > start else 0
            f.write(view[pos:cut])
            f.write(bad_lines[k])
            pos = cut
            k += 1
        f.write(view[pos:])


def generate(
    format: str, rows: int, seed: int, output: str | Path, bad_fraction: float = 0.0
) -> dict[str, Any]:
    """Write ``output`` (the log), ``output.truth`` and ``output.meta.json``; return the meta.

    The same (format, rows, seed, bad_fraction) always gives byte-identical files. The planted
    model depends on (format, seed) only, so logs of different sizes share it, and the good
    rows do not depend on ``bad_fraction``: a log with bad lines is the clean log of the same
    seed with lines inserted, which lets tests check quarantine against the clean run.
    """
    if format not in _FORMATS:
        raise ValueError(f"unknown log format {format!r}; known: {', '.join(sorted(_FORMATS))}")
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0.0 <= bad_fraction <= 1.0:
        raise ValueError(f"bad_fraction must be in [0, 1], got {bad_fraction}")
    started = time.perf_counter()
    fmt = _FORMATS[format]()
    model_ss, calib_ss, rows_ss, bad_ss = np.random.SeedSequence(seed).spawn(4)
    model = fmt.build_model(np.random.default_rng(model_ss), np.random.default_rng(calib_ss))

    rng = np.random.default_rng(rows_ss)
    sample = model.sample(rng, rows)
    main, inter = model.logit_parts(sample)
    micro = np.clip(np.rint(_sigmoid(model.bias + main + inter) * _PROB_SCALE), 1, _PROB_SCALE - 1)
    micro = micro.astype(np.int64)
    truth = micro / _PROB_SCALE  # == float(text) of the truth file, exactly
    labels = (rng.random(rows) < truth).astype(np.int8)

    brng = np.random.default_rng(bad_ss)
    n_bad = round(rows * bad_fraction)
    kinds = brng.permutation(np.arange(n_bad) % len(BAD_KINDS))
    positions = (
        np.sort(brng.choice(rows + n_bad, n_bad, replace=False))
        if n_bad
        else np.empty(0, dtype=np.int64)
    )
    bad_after = positions - np.arange(n_bad)  # good lines before each bad line
    base = model.sample(brng, n_bad)
    base_truth = _sigmoid(model.bias + sum(model.logit_parts(base)))
    base_labels = (brng.random(n_bad) < base_truth).astype(np.int8)
    draws = brng.integers(0, 2**31, size=(n_bad, 3))
    base_lines = bytes(fmt.render(model, base, base_labels)).split(b"\n")[:n_bad] if n_bad else []
    bad_lines = [
        fmt.corrupt(line, BAD_KINDS[kind], d, model) + b"\n"
        for line, kind, d in zip(base_lines, kinds, draws, strict=True)
    ]

    positives = int(labels.sum())
    meta: dict[str, Any] = {
        "format": fmt.name,
        "seed": seed,
        "rows": rows,
        "columns": fmt.num_columns,
        "bad_fraction": bad_fraction,
        "bad_lines": {k: int((kinds == i).sum()) for i, k in enumerate(BAD_KINDS)},
        "bad_lines_total": n_bad,
        "total_lines": rows + n_bad + (fmt.header is not None),
        "positives": positives,
        "positive_rate": positives / rows if rows else None,
        "mean_truth": float(truth.mean()) if rows else None,
        "oracle": {
            "auc": _oracle_auc(labels, truth),
            "logloss": _oracle_logloss(labels, truth),
            # AUC of the main effects alone: about the ceiling of any linear model.
            "main_effects_auc": _oracle_auc(labels, main),
            "logit_std": {
                "main": float(main.std()) if rows else None,
                "interaction": float(inter.std()) if rows else None,
            },
        },
        "planted_model": model.summary(),
    }

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    truth_path = out.with_name(out.name + TRUTH_SUFFIX)
    meta_path = out.with_name(out.name + META_SUFFIX)
    meta["files"] = {"log": out.name, "truth": truth_path.name}
    temps = [_temp_path(p) for p in (out, truth_path, meta_path)]
    try:
        with open(temps[0], "wb") as f:
            _write_log(f, fmt, model, sample, labels, bad_lines, bad_after)
        with open(temps[1], "wb") as f:
            for start in range(0, rows, _RENDER_CHUNK):
                f.write(_render_truth(micro[start : start + _RENDER_CHUNK]))
        temps[2].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # The meta file goes last, and an old one goes first: a meta file vouches that the
        # log and truth beside it are complete and belong together.
        meta_path.unlink(missing_ok=True)
        for tmp, final in zip(temps, (out, truth_path, meta_path), strict=True):
            _finish(tmp, final)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)

    return {
        **meta,
        "output": str(out),
        "truth_path": str(truth_path),
        "meta_path": str(meta_path),
        "seconds": round(time.perf_counter() - started, 3),
    }


# --------------------------------------------------------------------------------------------
# featurized datasets from a planted FM, without Spark (training tests and benchmarks)
# --------------------------------------------------------------------------------------------
# The raw-log generator above exercises the whole pipeline; training tests and the training
# benchmark need field-indexed Parquet of a chosen size and shape (files, row groups) fast and
# without a Spark job in the way. This writes the feature job's layout (train/valid/test
# Parquet folders with _SUCCESS, feature_map.json, a top-level _SUCCESS) from a planted
# factorization machine and returns the planted model's own AUC per split.

_SPLITS = ("train", "valid", "test")


def _zipf_ids(rng: np.random.Generator, rows: int, size: int) -> np.ndarray:
    """Local ids in ``[0, size)`` with Zipf-like frequencies, as categorical logs have."""
    probs = 1.0 / np.arange(1, size + 1) ** 1.1
    return rng.choice(size, size=rows, p=probs / probs.sum()).astype(np.int32)


def _planted_logits(ids: np.ndarray, linear: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """FM logits without bias, in chunks so a million-row split needs no [rows, C, k] array."""
    out = np.empty(ids.shape[0])
    for lo in range(0, ids.shape[0], 100_000):
        chunk = ids[lo : lo + 100_000]
        v = factors[chunk]  # [rows, C, k]
        pair = 0.5 * (v.sum(axis=1) ** 2 - (v**2).sum(axis=1)).sum(axis=1)
        out[lo : lo + 100_000] = linear[chunk].sum(axis=1) + pair
    return out


def write_planted_dataset(
    output: str | Path,
    *,
    rows: dict[str, int],
    field_sizes: list[int] | None = None,
    embed_dim: int = 2,
    interaction_scale: float = 0.7,
    linear_scale: float = 0.3,
    files_per_split: int = 2,
    row_group_rows: int = 5_000,
    row_group_sizes: list[int] | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Write a featurized dataset drawn from a planted FM; return the oracle AUC per split.

    ``row_group_sizes`` (train split only) writes one file per listed size, each a single row
    group, to build deliberately uneven shards; otherwise each split is ``files_per_split``
    files with row groups of ``row_group_rows``. Interactions dominate the planted logit
    (``interaction_scale`` vs ``linear_scale``), so a model without them is clearly worse.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    # Small fields: tests train on a few 10k rows, and FFM's (fields - 1) x k parameters per
    # feature need each value seen often enough to be learned, not just memorised.
    sizes = field_sizes or [6, 10, 8, 12, 5, 6, 10, 8]
    fmap = FeatureMap.synthetic(sizes, dataset="planted")
    rng = np.random.default_rng(seed)
    n = fmap.num_features
    linear = rng.normal(0.0, linear_scale, n)
    factors = rng.normal(0.0, interaction_scale / np.sqrt(embed_dim), (n, embed_dim))
    offsets = np.array(fmap.field_offsets, dtype=np.int32)
    oracle: dict[str, float] = {}
    bias = None
    for split in _SPLITS:
        count = rows[split]
        local = np.stack([_zipf_ids(rng, count, s) for s in sizes], axis=1)
        ids = local + offsets
        z = _planted_logits(ids, linear, factors)
        if bias is None:  # aim at a 25% click rate, as display-ads logs roughly have
            bias = float(np.log(0.25 / 0.75) - np.median(z))
        p = 1.0 / (1.0 + np.exp(-(z + bias)))
        label = (rng.random(count) < p).astype(np.float32)
        oracle[split] = roc_auc(label, p)
        table = pa.table(
            {"label": label, **{c: ids[:, i] for i, c in enumerate(fmap.column_names)}}
        )
        _write_split(
            out / split,
            table,
            files_per_split,
            row_group_rows,
            row_group_sizes if split == "train" else None,
        )
    fmap.save(out)
    (out / "_SUCCESS").touch()
    return oracle


def _write_split(
    directory: Path,
    table: pa.Table,
    files: int,
    row_group_rows: int,
    row_group_sizes: list[int] | None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if row_group_sizes:
        bounds = np.cumsum([0, *row_group_sizes])
        if bounds[-1] != table.num_rows:
            raise ValueError(f"row_group_sizes sum to {bounds[-1]}, the split has {table.num_rows}")
        chunks = [(int(a), int(b - a), int(b - a)) for a, b in itertools.pairwise(bounds)]
    else:
        step = -(-table.num_rows // files)
        chunks = [(a, step, row_group_rows) for a in range(0, table.num_rows, step)]
    for i, (start, length, group) in enumerate(chunks):
        pq.write_table(
            table.slice(start, length),
            directory / f"part-{i:05d}.parquet",
            row_group_size=max(1, group),
        )
    (directory / "_SUCCESS").touch()
