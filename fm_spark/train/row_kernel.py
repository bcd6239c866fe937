"""The row optimizer's update rules as one C++ pass per row on the CPU, built once at setup.

In torch ops a lazy Adam step over the batch's unique rows is about fifteen passes over
``[U, dim]`` tensors (``index_select`` of both moments, the arithmetic with its temporaries,
two ``index_copy_`` and an ``index_add_``); on the FFM table (``U`` ~ 40K rows of 156 floats
per batch) that was a third of the whole training step. A loop over rows that reads a row's
gradient, weight and state once and writes them back in place touches each byte once.

The arithmetic is the torch path's, operation for operation (so the tests can compare the
two), and rows are split between threads by row: the ids are unique, so no two threads write
the same row. ``make setup`` builds it (``python -m fm_spark.train.row_kernel``); without a
compiler, off the CPU, or with ``FM_SPARK_ROW_KERNEL=0``, :class:`~fm_spark.train.optim.
RowOptimizer` keeps its torch ops.
"""

from __future__ import annotations

import logging

from torch import Tensor

from fm_spark.native import InlineKernel

__all__ = ["adagrad", "adam", "available", "build", "ftrl", "usable"]


_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <initializer_list>
#include <vector>

namespace {

void check(const torch::Tensor& weight, const torch::Tensor& ids, const torch::Tensor& grads) {
  TORCH_CHECK(weight.is_contiguous() && grads.is_contiguous() && ids.is_contiguous(),
              "row kernel: tensors must be contiguous");
  TORCH_CHECK(ids.scalar_type() == torch::kLong, "row kernel: ids must be int64");
  TORCH_CHECK(grads.size(0) == ids.size(0) && grads.size(1) == weight.size(1),
              "row kernel: grads must be [len(ids), dim]");
  if (ids.numel() == 0) return;
  auto mm = at::aminmax(ids);
  TORCH_CHECK(std::get<0>(mm).item<int64_t>() >= 0 &&
              std::get<1>(mm).item<int64_t>() < weight.size(0), "row kernel: id out of range");
}

// Writes through data pointers skip the version counter that in-place torch ops bump (and
// autograd checks saved tensors against): bump it, as the torch path's ops would have.
void bump(std::initializer_list<torch::Tensor> tensors) {
  for (const auto& t : tensors) torch::autograd::impl::bump_version(t);
}

// Calls fn(row, u) for every u with row = ids[u], rows split between threads. The rows lie
// anywhere in tables far larger than the cache, so those of a few ids ahead are requested
// (in each of the `tables` [rows, dim] arrays) while the current one is updated.
template <typename T, typename Fn>
void for_rows(const torch::Tensor& ids, int64_t dim, std::initializer_list<T*> tables,
              Fn&& fn) {
  const int64_t* I = ids.data_ptr<int64_t>();
  const std::vector<T*> bases(tables);
  constexpr int64_t ahead = 4, line = 64 / sizeof(T);
  at::parallel_for(0, ids.size(0), 256, [&](int64_t lo, int64_t hi) {
    for (int64_t u = lo; u < hi; ++u) {
      if (u + ahead < hi) {
        for (T* base : bases) {
          T* row = base + I[u + ahead] * dim;
          for (int64_t t = 0; t < dim; t += line) __builtin_prefetch(row + t, 1);
        }
      }
      fn(I[u], u);
    }
  });
}

}  // namespace

void adam_rows(torch::Tensor weight, torch::Tensor exp_avg, torch::Tensor exp_avg_sq,
               torch::Tensor ids, torch::Tensor grads, double beta1, double beta2, double eps,
               double step_size) {
  check(weight, ids, grads);
  TORCH_CHECK(exp_avg.is_contiguous() && exp_avg_sq.is_contiguous(), "row kernel: state");
  const int64_t D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "adam_rows", [&] {
    using T = scalar_t;
    T* W = weight.data_ptr<T>();
    T* M = exp_avg.data_ptr<T>();
    T* V = exp_avg_sq.data_ptr<T>();
    const T* G = grads.data_ptr<T>();
    const T c1 = T(1 - beta1), c2 = T(1 - beta2), e = T(eps), ss = T(-step_size);
    for_rows<T>(ids, D, {W, M, V}, [&](int64_t r, int64_t u) {
      T* w = W + r * D;
      T* m = M + r * D;
      T* v = V + r * D;
      const T* g = G + u * D;
      for (int64_t t = 0; t < D; ++t) {
        const T gt = g[t];
        const T mt = m[t] + (gt - m[t]) * c1;
        const T vt = v[t] + (gt * gt - v[t]) * c2;
        m[t] = mt;
        v[t] = vt;
        w[t] = w[t] + (mt / (std::sqrt(vt) + e)) * ss;
      }
    });
  });
  bump({weight, exp_avg, exp_avg_sq});
}

void adagrad_rows(torch::Tensor weight, torch::Tensor sum, torch::Tensor ids,
                  torch::Tensor grads, double lr, double eps) {
  check(weight, ids, grads);
  TORCH_CHECK(sum.is_contiguous(), "row kernel: state");
  const int64_t D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "adagrad_rows", [&] {
    using T = scalar_t;
    T* W = weight.data_ptr<T>();
    T* S = sum.data_ptr<T>();
    const T* G = grads.data_ptr<T>();
    const T e = T(eps), step = T(-lr);
    for_rows<T>(ids, D, {W, S}, [&](int64_t r, int64_t u) {
      T* w = W + r * D;
      T* s = S + r * D;
      const T* g = G + u * D;
      for (int64_t t = 0; t < D; ++t) {
        const T st = s[t] + g[t] * g[t];
        s[t] = st;
        w[t] = w[t] + (g[t] / (std::sqrt(st) + e)) * step;
      }
    });
  });
  bump({weight, sum});
}

void ftrl_rows(torch::Tensor weight, torch::Tensor z, torch::Tensor n, torch::Tensor ids,
               torch::Tensor grads, double alpha, double beta, double l1, double l2) {
  check(weight, ids, grads);
  TORCH_CHECK(z.is_contiguous() && n.is_contiguous(), "row kernel: state");
  const int64_t D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "ftrl_rows", [&] {
    using T = scalar_t;
    T* W = weight.data_ptr<T>();
    T* Z = z.data_ptr<T>();
    T* N = n.data_ptr<T>();
    const T* G = grads.data_ptr<T>();
    const T a = T(alpha), b = T(beta), L1 = T(l1), L2 = T(l2);
    for_rows<T>(ids, D, {W, Z, N}, [&](int64_t r, int64_t u) {
      T* w = W + r * D;
      T* zr = Z + r * D;
      T* nr = N + r * D;
      const T* g = G + u * D;
      for (int64_t t = 0; t < D; ++t) {
        const T gt = g[t];
        const T n_new = nr[t] + gt * gt;
        const T sqrt_new = std::sqrt(n_new);
        const T sigma = (sqrt_new - std::sqrt(nr[t])) / a;
        const T z_new = zr[t] + gt - sigma * w[t];
        const T sign = T((z_new > 0) - (z_new < 0));
        const T shrunk = z_new - sign * L1;
        T w_new = -shrunk / ((b + sqrt_new) / a + L2);
        if (L1 > 0 && std::abs(z_new) <= L1) w_new = 0;
        w[t] = w_new;
        zr[t] = z_new;
        nr[t] = n_new;
      }
    });
  });
  bump({weight, z, n});
}
"""

_KERNEL = InlineKernel(
    "fm_spark_row_updates",
    _SOURCE,
    ["adam_rows", "adagrad_rows", "ftrl_rows"],
    switch="FM_SPARK_ROW_KERNEL",
)
build = _KERNEL.build
available = _KERNEL.available


def usable(weight: Tensor, *state: Tensor) -> bool:
    """Whether this table's update can run in the kernel: CPU, contiguous, kernel built."""
    tensors = (weight, *state)
    if any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return False
    return available()


def adam(weight: Tensor, m: Tensor, v: Tensor, ids: Tensor, g: Tensor, **kw: float) -> None:
    """Lazy Adam on rows ``ids`` in place (``beta1``, ``beta2``, ``eps``, ``step_size``)."""
    _KERNEL.module.adam_rows(
        weight, m, v, ids.contiguous(), g.contiguous(),
        kw["beta1"], kw["beta2"], kw["eps"], kw["step_size"],
    )  # fmt: skip


def adagrad(weight: Tensor, s: Tensor, ids: Tensor, g: Tensor, lr: float, eps: float) -> None:
    """Adagrad on rows ``ids`` in place."""
    _KERNEL.module.adagrad_rows(weight, s, ids.contiguous(), g.contiguous(), lr, eps)


def ftrl(weight: Tensor, z: Tensor, n: Tensor, ids: Tensor, g: Tensor, **kw: float) -> None:
    """FTRL-Proximal on rows ``ids`` in place (``alpha``, ``beta``, ``l1``, ``l2``)."""
    _KERNEL.module.ftrl_rows(
        weight, z, n, ids.contiguous(), g.contiguous(),
        kw["alpha"], kw["beta"], kw["l1"], kw["l2"],
    )  # fmt: skip


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO)
    ok = build(verbose="-v" in sys.argv) is not None
    print(f"row update C++ kernel: {'built' if ok else 'NOT available (torch ops will be used)'}")
