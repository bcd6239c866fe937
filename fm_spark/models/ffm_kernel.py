"""FFM's pair term as one C++ pass per sample on the CPU, built once from source at setup.

In torch ops the pair term ``sum_{i<j} x_i x_j <V[b, i, f(j)], V[b, j, f(i)]>`` needs a
``[batch, C, C, k]`` product (twice the pairs, since only ``i < j`` counts) plus its backward
and the masking, each a full pass over memory the size of the batch's rows times ``C``; at 39
fields that dominated the FFM step. One sample's rows (``C x F x k`` floats, 24 KB at k = 4)
fit in cache, so a loop over samples that reads them once forward, and reads them and writes
their gradient once backward, is bound by the lookup's own memory traffic instead.

The extension compiles with the machine's C++ compiler through
``torch.utils.cpp_extension.load_inline`` into torch's extension cache; ``make setup`` builds
it (``python -m fm_spark.models.ffm_kernel``), so training loads it in a second. Where it
cannot be built (no compiler) or ``FM_SPARK_FFM_KERNEL=0``, FFM uses the torch ops; the
tests check both give the same values and gradients.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["available", "build", "pair_interaction"]

log = logging.getLogger("fm_spark.models")

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>

// e: [B, C, F*k] rows of each column's feature; x: [B, C] values; cf: [C] column -> field.
torch::Tensor ffm_forward(torch::Tensor e, torch::Tensor x, torch::Tensor cf, int64_t k) {
  e = e.contiguous(); x = x.contiguous();
  auto cfc = cf.to(torch::kLong).contiguous();
  const int64_t B = e.size(0), C = e.size(1), W = e.size(2);
  auto out = torch::empty({B}, e.options());
  const int64_t* f = cfc.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "ffm_forward", [&] {
    const scalar_t* E = e.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const scalar_t* eb = E + b * C * W;
        const scalar_t* xb = X + b * C;
        scalar_t total = 0;
        for (int64_t i = 0; i < C; ++i) {
          const scalar_t xi = xb[i];
          if (xi == 0) continue;
          const scalar_t* ei = eb + i * W;
          for (int64_t j = i + 1; j < C; ++j) {
            const scalar_t xj = xb[j];
            if (xj == 0) continue;
            const scalar_t* a = ei + f[j] * k;
            const scalar_t* c = eb + j * W + f[i] * k;
            scalar_t dot = 0;
            for (int64_t t = 0; t < k; ++t) dot += a[t] * c[t];
            total += dot * xi * xj;
          }
        }
        O[b] = total;
      }
    });
  });
  return out;
}

// Gradients of ffm_forward's output weighted by g [B]: (d e, d x).
std::vector<torch::Tensor> ffm_backward(torch::Tensor g, torch::Tensor e, torch::Tensor x,
                                        torch::Tensor cf, int64_t k) {
  e = e.contiguous(); x = x.contiguous(); g = g.contiguous();
  auto cfc = cf.to(torch::kLong).contiguous();
  const int64_t B = e.size(0), C = e.size(1), W = e.size(2);
  // Zeroed per sample inside the loop, while that sample's block is in cache: one pass less.
  auto de = torch::empty_like(e);
  auto dx = torch::empty_like(x);
  const int64_t* f = cfc.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "ffm_backward", [&] {
    const scalar_t* E = e.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = g.data_ptr<scalar_t>();
    scalar_t* DE = de.data_ptr<scalar_t>();
    scalar_t* DX = dx.data_ptr<scalar_t>();
    at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const scalar_t* eb = E + b * C * W;
        scalar_t* deb = DE + b * C * W;
        const scalar_t* xb = X + b * C;
        scalar_t* dxb = DX + b * C;
        const scalar_t gb = G[b];
        std::fill(deb, deb + C * W, scalar_t(0));
        std::fill(dxb, dxb + C, scalar_t(0));
        for (int64_t i = 0; i < C; ++i) {
          const scalar_t xi = xb[i];
          for (int64_t j = i + 1; j < C; ++j) {
            const scalar_t xj = xb[j];
            const int64_t ai = i * W + f[j] * k, ci = j * W + f[i] * k;
            const scalar_t* a = eb + ai;
            const scalar_t* c = eb + ci;
            scalar_t dot = 0;
            for (int64_t t = 0; t < k; ++t) dot += a[t] * c[t];
            dxb[i] += gb * xj * dot;
            dxb[j] += gb * xi * dot;
            const scalar_t w = gb * xi * xj;
            if (w == 0) continue;
            scalar_t* da = deb + ai;
            scalar_t* dc = deb + ci;
            for (int64_t t = 0; t < k; ++t) { da[t] += w * c[t]; dc[t] += w * a[t]; }
          }
        }
      }
    });
  });
  return {de, dx};
}
"""

_module: Any = None
_failed = False


def build(verbose: bool = False) -> Any:
    """Compile (or load from torch's extension cache) the kernel; ``None`` if it cannot."""
    global _module, _failed
    if _module is not None or _failed:
        return _module
    try:
        from torch.utils.cpp_extension import load_inline

        _module = load_inline(
            name="fm_spark_ffm_pairs",
            cpp_sources=_SOURCE,
            functions=["ffm_forward", "ffm_backward"],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as exc:  # no compiler, no headers: fall back to torch ops
        _failed = True
        log.warning("FFM C++ kernel unavailable, using torch ops: %s", str(exc)[:300])
    return _module


def available() -> bool:
    """Whether FFM on the CPU runs the kernel (built here, not switched off)."""
    if os.environ.get("FM_SPARK_FFM_KERNEL", "1") == "0":
        return False
    return build() is not None


class _PairInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, e: Tensor, x: Tensor, cf: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(e, x, cf)
        ctx.k = k
        return _module.ffm_forward(e, x, cf, k)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        e, x, cf = ctx.saved_tensors
        de, dx = _module.ffm_backward(grad, e, x, cf, ctx.k)
        return de, dx, None, None


def pair_interaction(e: Tensor, x: Tensor, column_fields: Tensor, k: int) -> Tensor:
    """``sum_{i<j} x_i x_j <e[b, i, f(j)], e[b, j, f(i)]>`` for ``e`` ``[B, C, F*k]``."""
    return _PairInteraction.apply(e, x, column_fields, k)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    ok = build(verbose="-v" in sys.argv) is not None
    print(f"FFM C++ kernel: {'built' if ok else 'NOT available (torch ops will be used)'}")
