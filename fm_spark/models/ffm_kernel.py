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

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from fm_spark.native import InlineKernel

__all__ = ["available", "build", "pair_interaction", "pair_interaction_rows"]


_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <type_traits>
#include <vector>

namespace {

// Calls fn with std::integral_constant<int, K>: K = k for the common widths (so the k-loops
// unroll and vectorise), K = 0 (read k at run time) otherwise.
template <typename Fn>
void dispatch_k(int64_t k, Fn&& fn) {
  switch (k) {
    case 4: fn(std::integral_constant<int, 4>{}); break;
    case 8: fn(std::integral_constant<int, 8>{}); break;
    case 16: fn(std::integral_constant<int, 16>{}); break;
    default: fn(std::integral_constant<int, 0>{});
  }
}

// One sample's sum_{i<j} x_i x_j <p_i[f(j)], p_j[f(i)]>; p[i] is column i's row (F*k values).
template <typename T, int K>
inline T sample_forward(const T* const* p, const T* x, const int64_t* f, int64_t C, int64_t kk) {
  const int64_t k = K > 0 ? K : kk;
  T total = 0;
  for (int64_t i = 0; i < C; ++i) {
    const T xi = x[i];
    if (xi == 0) continue;
    const T* pi = p[i];
    const int64_t fi = f[i] * k;
    for (int64_t j = i + 1; j < C; ++j) {
      const T xj = x[j];
      if (xj == 0) continue;
      const T* a = pi + f[j] * k;
      const T* c = p[j] + fi;
      T dot = 0;
      for (int64_t t = 0; t < k; ++t) dot += a[t] * c[t];
      total += dot * xi * xj;
    }
  }
  return total;
}

// Adds one sample's gradient (output weighted by g) to the rows d[i] and, if dx, to
// dx[0..C). The d[i] are distinct blocks that overlap neither each other nor any p[i].
template <typename T, int K>
inline void sample_backward(const T* const* p, T* const* d, const T* x, T g, const int64_t* f,
                            int64_t C, int64_t kk, T* dx) {
  const int64_t k = K > 0 ? K : kk;
  for (int64_t i = 0; i < C; ++i) {
    const T xi = x[i];
    const T* pi = p[i];
    T* di = d[i];
    const int64_t fi = f[i] * k;
    for (int64_t j = i + 1; j < C; ++j) {
      const T xj = x[j];
      const int64_t fj = f[j] * k;
      const T* a = pi + fj;
      const T* c = p[j] + fi;
      if (dx != nullptr) {
        T dot = 0;
        for (int64_t t = 0; t < k; ++t) dot += a[t] * c[t];
        dx[i] += g * xj * dot;
        dx[j] += g * xi * dot;
      }
      const T w = g * xi * xj;
      if (w == 0) continue;
      T* __restrict da = di + fj;
      T* __restrict dc = d[j] + fi;
      if constexpr (K > 0) {
        for (int t = 0; t < K; ++t) da[t] += w * c[t];
        for (int t = 0; t < K; ++t) dc[t] += w * a[t];
      } else {
        for (int64_t t = 0; t < k; ++t) {
          const T at = a[t], ct = c[t];
          da[t] += w * ct;
          dc[t] += w * at;
        }
      }
    }
  }
}

// Asks for the next sample's rows and gradient rows while this one is computed: they lie
// anywhere in arrays far larger than the cache, and waiting for them dominated the loop.
// grad[i] (or nullptr) is where column i's gradient row will be added.
template <typename T>
inline void prefetch_rows(const T* rows, T* const* grad, const int64_t* index, int64_t C,
                          int64_t W) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t i = 0; i < C; ++i) {
    const T* r = rows + index[i] * W;
    T* g = grad != nullptr ? grad[i] : nullptr;
    for (int64_t t = 0; t < W; t += line) {
      __builtin_prefetch(r + t, 0);
      if (grad != nullptr) __builtin_prefetch(g + t, 1);
    }
  }
}

void check_index(const torch::Tensor& index, int64_t rows) {
  if (index.numel() == 0) return;
  auto mm = at::aminmax(index);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < rows, "FFM kernel: row index out of range [0, ", rows, "): ", lo,
              "..", hi);
}

}  // namespace

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
    dispatch_k(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
        std::vector<const scalar_t*> p(C);
        for (int64_t b = lo; b < hi; ++b) {
          for (int64_t i = 0; i < C; ++i) p[i] = E + (b * C + i) * W;
          O[b] = sample_forward<scalar_t, K>(p.data(), X + b * C, f, C, k);
        }
      });
    });
  });
  return out;
}

// Gradients of ffm_forward's output weighted by g [B]: (d e, d x; empty unless need_dx).
std::vector<torch::Tensor> ffm_backward(torch::Tensor g, torch::Tensor e, torch::Tensor x,
                                        torch::Tensor cf, int64_t k, bool need_dx) {
  e = e.contiguous(); x = x.contiguous(); g = g.contiguous();
  auto cfc = cf.to(torch::kLong).contiguous();
  const int64_t B = e.size(0), C = e.size(1), W = e.size(2);
  // Zeroed per sample inside the loop, while that sample's block is in cache: one pass less.
  auto de = torch::empty_like(e);
  auto dx = need_dx ? torch::zeros_like(x) : torch::empty({0}, x.options());
  const int64_t* f = cfc.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(e.scalar_type(), "ffm_backward", [&] {
    const scalar_t* E = e.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = g.data_ptr<scalar_t>();
    scalar_t* DE = de.data_ptr<scalar_t>();
    scalar_t* DX = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    dispatch_k(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
        std::vector<const scalar_t*> p(C);
        std::vector<scalar_t*> d(C);
        for (int64_t b = lo; b < hi; ++b) {
          for (int64_t i = 0; i < C; ++i) {
            p[i] = E + (b * C + i) * W;
            d[i] = DE + (b * C + i) * W;
          }
          std::fill(DE + b * C * W, DE + (b + 1) * C * W, scalar_t(0));
          sample_backward<scalar_t, K>(p.data(), d.data(), X + b * C, G[b], f, C, k,
                                       DX ? DX + b * C : nullptr);
        }
      });
    });
  });
  return {de, dx};
}

// The same pair term with column i of sample b reading rows[index[b, i]]: no [B, C, F*k] copy.
torch::Tensor ffm_rows_forward(torch::Tensor rows, torch::Tensor index, torch::Tensor x,
                               torch::Tensor cf, int64_t k) {
  rows = rows.contiguous(); x = x.contiguous();
  auto idx = index.to(torch::kLong).contiguous();
  auto cfc = cf.to(torch::kLong).contiguous();
  const int64_t R = rows.size(0), W = rows.size(1), B = idx.size(0), C = idx.size(1);
  check_index(idx, R);
  auto out = torch::empty({B}, rows.options());
  const int64_t* f = cfc.data_ptr<int64_t>();
  const int64_t* I = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "ffm_rows_forward", [&] {
    const scalar_t* Rw = rows.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    dispatch_k(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      at::parallel_for(0, B, 16, [&](int64_t lo, int64_t hi) {
        // The sample's rows copied into a local block first, as in the backward pass.
        std::vector<scalar_t> rows_in(C * W);
        std::vector<const scalar_t*> p(C);
        for (int64_t i = 0; i < C; ++i) p[i] = rows_in.data() + i * W;
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t* Ib = I + b * C;
          if (b + 1 < hi) prefetch_rows<scalar_t>(Rw, nullptr, Ib + C, C, W);
          for (int64_t i = 0; i < C; ++i) {
            std::copy(Rw + Ib[i] * W, Rw + (Ib[i] + 1) * W, rows_in.data() + i * W);
          }
          O[b] = sample_forward<scalar_t, K>(p.data(), X + b * C, f, C, k);
        }
      });
    });
  });
  return out;
}

// Gradient of ffm_rows_forward w.r.t. rows ([R, F*k], summed over every use) and x. Samples
// are split into one contiguous slot per thread. A row that only one slot's samples use is
// accumulated by that slot straight into the result; a row used by several slots (the
// frequent features) is accumulated by each slot s > 0 into its own zeroed buffer of just
// those shared rows, and the buffers are added in at the end. So no two threads ever write
// the same memory, the extra memory and passes are sized by the shared rows only, and for a
// given thread count the sums run in a fixed order.
std::vector<torch::Tensor> ffm_rows_backward(torch::Tensor g, torch::Tensor rows,
                                             torch::Tensor index, torch::Tensor x,
                                             torch::Tensor cf, int64_t k, bool need_dx) {
  rows = rows.contiguous(); x = x.contiguous(); g = g.contiguous();
  auto idx = index.to(torch::kLong).contiguous();
  auto cfc = cf.to(torch::kLong).contiguous();
  const int64_t R = rows.size(0), W = rows.size(1), B = idx.size(0), C = idx.size(1);
  check_index(idx, R);
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / 256));
  const int64_t* f = cfc.data_ptr<int64_t>();
  const int64_t* I = idx.data_ptr<int64_t>();
  auto slot_begin = [&](int64_t s) { return s * B / slots; };
  // owner[r]: the one slot using row r, -1 if none, -2 if several; shared[q]: shared rows.
  std::vector<int64_t> owner(slots > 1 ? R : 0, -1), shared_pos(slots > 1 ? R : 0, -1);
  std::vector<int64_t> shared;
  for (int64_t s = 0; s < slots && slots > 1; ++s) {
    for (int64_t n = slot_begin(s) * C; n < slot_begin(s + 1) * C; ++n) {
      int64_t& o = owner[I[n]];
      o = o == -1 || o == s ? s : -2;
    }
  }
  for (int64_t r = 0; r < static_cast<int64_t>(owner.size()); ++r) {
    if (owner[r] == -2) {
      shared_pos[r] = static_cast<int64_t>(shared.size());
      shared.push_back(r);
    }
  }
  const int64_t S = static_cast<int64_t>(shared.size());
  auto drows = torch::zeros_like(rows);
  auto extra = torch::empty({std::max<int64_t>(slots - 1, 0), S, W}, rows.options());
  auto dx = need_dx ? torch::zeros_like(x) : torch::empty({0}, x.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "ffm_rows_backward", [&] {
    const scalar_t* Rw = rows.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* G = g.data_ptr<scalar_t>();
    scalar_t* D0 = drows.data_ptr<scalar_t>();
    scalar_t* DS = extra.data_ptr<scalar_t>();
    scalar_t* DX = need_dx ? dx.data_ptr<scalar_t>() : nullptr;
    dispatch_k(k, [&](auto kc) {
      constexpr int K = decltype(kc)::value;
      at::parallel_for(0, slots, 1, [&](int64_t s_lo, int64_t s_hi) {
        // One sample's rows and their gradient in a local block (C * F * k values, in L1):
        // the pair loops' strided accesses stay in cache, and the rows are read and their
        // gradient added row by row, in the order the prefetcher follows.
        std::vector<scalar_t> rows_in(C * W), grad_out(C * W);
        std::vector<const scalar_t*> p(C);
        std::vector<scalar_t*> d(C), dst(C), next(C);
        for (int64_t i = 0; i < C; ++i) {
          p[i] = rows_in.data() + i * W;
          d[i] = grad_out.data() + i * W;
        }
        for (int64_t s = s_lo; s < s_hi; ++s) {
          scalar_t* mine = s == 0 ? nullptr : DS + (s - 1) * S * W;
          if (mine != nullptr) std::fill(mine, mine + S * W, scalar_t(0));
          auto target = [&](int64_t r) {
            return mine != nullptr && owner[r] == -2 ? mine + shared_pos[r] * W : D0 + r * W;
          };
          const int64_t b_end = slot_begin(s + 1);
          for (int64_t b = slot_begin(s); b < b_end; ++b) {
            const int64_t* Ib = I + b * C;
            for (int64_t i = 0; i < C; ++i) dst[i] = target(Ib[i]);
            if (b + 1 < b_end) {
              for (int64_t i = 0; i < C; ++i) next[i] = target(Ib[C + i]);
              prefetch_rows(Rw, next.data(), Ib + C, C, W);
            }
            for (int64_t i = 0; i < C; ++i) {
              std::copy(Rw + Ib[i] * W, Rw + (Ib[i] + 1) * W, rows_in.data() + i * W);
            }
            std::fill(grad_out.begin(), grad_out.end(), scalar_t(0));
            sample_backward<scalar_t, K>(p.data(), d.data(), X + b * C, G[b], f, C, k,
                                         DX ? DX + b * C : nullptr);
            for (int64_t i = 0; i < C; ++i) {
              scalar_t* out = dst[i];
              const scalar_t* src = grad_out.data() + i * W;
              for (int64_t t = 0; t < W; ++t) out[t] += src[t];
            }
          }
        }
      });
    });
    if (slots > 1 && S > 0) {
      at::parallel_for(0, S, 64, [&](int64_t lo, int64_t hi) {
        for (int64_t s = 1; s < slots; ++s) {
          for (int64_t q = lo; q < hi; ++q) {
            scalar_t* out = D0 + shared[q] * W;
            const scalar_t* src = DS + ((s - 1) * S + q) * W;
            for (int64_t t = 0; t < W; ++t) out[t] += src[t];
          }
        }
      });
    }
  });
  return {drows, dx};
}
"""

_KERNEL = InlineKernel(
    "fm_spark_ffm",
    _SOURCE,
    ["ffm_forward", "ffm_backward", "ffm_rows_forward", "ffm_rows_backward"],
    switch="FM_SPARK_FFM_KERNEL",
)
build = _KERNEL.build
available = _KERNEL.available


class _PairInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, e: Tensor, x: Tensor, cf: Tensor, k: int) -> Tensor:
        ctx.save_for_backward(e, x, cf)
        ctx.k = k
        return _KERNEL.module.ffm_forward(e, x, cf, k)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        e, x, cf = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[1]
        de, dx = _KERNEL.module.ffm_backward(grad, e, x, cf, ctx.k, need_dx)
        return de, dx if need_dx else None, None, None


class _RowsPairInteraction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, rows: Tensor, index: Tensor, x: Tensor, cf: Tensor, k: int
    ) -> Tensor:
        ctx.save_for_backward(rows, index, x, cf)
        ctx.k = k
        return _KERNEL.module.ffm_rows_forward(rows, index, x, cf, k)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        rows, index, x, cf = ctx.saved_tensors
        need_dx = ctx.needs_input_grad[2]
        drows, dx = _KERNEL.module.ffm_rows_backward(grad, rows, index, x, cf, ctx.k, need_dx)
        return drows, None, dx if need_dx else None, None, None


def pair_interaction(e: Tensor, x: Tensor, column_fields: Tensor, k: int) -> Tensor:
    """``sum_{i<j} x_i x_j <e[b, i, f(j)], e[b, j, f(i)]>`` for ``e`` ``[B, C, F*k]``."""
    return _PairInteraction.apply(e, x, column_fields, k)


def pair_interaction_rows(
    rows: Tensor, index: Tensor, x: Tensor, column_fields: Tensor, k: int
) -> Tensor:
    """:func:`pair_interaction` of ``e = rows[index]`` without materialising ``e``.

    ``rows`` ``[R, F*k]`` is a table (evaluation) or a lookup's unique rows with ``index`` its
    inverse ``[B, C]`` (training): the forward pass reads each sample's rows in place, and the
    backward pass adds every use of a row straight into its ``[R, F*k]`` gradient, which is
    what :class:`~fm_spark.train.optim.RowOptimizer` consumes. That drops the ``[B, C, F*k]``
    gather, its gradient, and the ``index_add`` that summed it per row: three passes over a
    tensor ``C`` times larger than the batch's unique rows.
    """
    return _RowsPairInteraction.apply(rows, index, x, column_fields, k)


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    ok = build(verbose="-v" in sys.argv) is not None
    print(f"FFM C++ kernel: {'built' if ok else 'NOT available (torch ops will be used)'}")
