// CPU kernels of the box IoU family: parallel over rows (pairwise) or pairs (aligned),
// with a unit-stride, branch-free inner loop that the compiler vectorizes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "../../kernels/box_math.h"
#include "box_iou.h"

namespace fastmtl {
namespace {

using box::Box;

// Enough pair evaluations per task to amortize the thread hand-off.
constexpr int64_t kPairsPerTask = 32768;
// Row parts of the pairwise backward, each with column accumulators of 4 x M: enough for
// 16 threads, and fixed so the sums do not depend on the thread count.
constexpr int64_t kGradParts = 16;

int64_t grain_for(int64_t inner) { return std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(inner, 1)); }

// Boxes as columns x1 | y1 | x2 | y2 | area | aspect, so that inner loops read unit-stride arrays.
template <typename T>
struct Columns {
  std::vector<T> data;
  int64_t n;
  template <typename scalar_t>
  Columns(const scalar_t* boxes, int64_t count) : data(6 * count), n(count) {
    for (int64_t j = 0; j < n; ++j) {
      const Box<T> b = box::load_box<T>(boxes + 4 * j);
      data[j] = b.x1; data[n + j] = b.y1; data[2 * n + j] = b.x2; data[3 * n + j] = b.y2;
      const box::BoxStats<T> st = box::box_stats(b);
      data[4 * n + j] = st.area;
      data[5 * n + j] = st.aspect;
    }
  }
  const T* col(int k) const { return data.data() + k * n; }
};

// out[j] = value(a, b_j) for j < m.
template <int V, typename T>
FASTMTL_CPU_CLONES void value_row(const T* __restrict__ x1, const T* __restrict__ y1, const T* __restrict__ x2,
                                  const T* __restrict__ y2, const T* __restrict__ area,
                                  const T* __restrict__ aspect, Box<T> a, T eps, T* __restrict__ out,
                                  int64_t m) {
  const box::BoxStats<T> sa = box::box_stats(a);
  for (int64_t j = 0; j < m; ++j) {
    out[j] = box::pair_value<V>(a, Box<T>{x1[j], y1[j], x2[j], y2[j]}, sa, box::BoxStats<T>{area[j], aspect[j]},
                                eps, T(0));
  }
}

// One row of the pairwise backward. For every column j:
//   ga_k[j]  = g[j] * d value(a, b_j) / d a_k        (written; the caller sums the row)
//   gb_k[j] += g[j] * d value(a, b_j) / d b_j,k      (accumulated down the columns)
// No reduction inside the loop, so that it vectorizes.
template <int V, typename T>
FASTMTL_CPU_CLONES void grad_row(const T* __restrict__ x1, const T* __restrict__ y1, const T* __restrict__ x2,
                                 const T* __restrict__ y2, const T* __restrict__ area,
                                 const T* __restrict__ aspect, Box<T> a, const T* __restrict__ g, T eps,
                                 T* __restrict__ ga0, T* __restrict__ ga1, T* __restrict__ ga2,
                                 T* __restrict__ ga3, T* __restrict__ gb0, T* __restrict__ gb1,
                                 T* __restrict__ gb2, T* __restrict__ gb3, int64_t m) {
  const box::BoxStats<T> sa = box::box_stats(a);
  for (int64_t j = 0; j < m; ++j) {
    Box<T> ga, gb;
    box::pair_grad<V>(a, Box<T>{x1[j], y1[j], x2[j], y2[j]}, sa, box::BoxStats<T>{area[j], aspect[j]}, g[j],
                      eps, T(0), ga, gb);
    ga0[j] = ga.x1; ga1[j] = ga.y1; ga2[j] = ga.x2; ga3[j] = ga.y2;
    gb0[j] += gb.x1; gb1[j] += gb.y1; gb2[j] += gb.x2; gb3[j] += gb.y2;
  }
}

template <typename T>
T sum(const T* __restrict__ x, int64_t m) {
  T s = T(0);
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < m; ++j) s += x[j];
  return s;
}

template <typename scalar_t, int V>
void pairwise_forward(const scalar_t* b1, const scalar_t* b2, int64_t n, int64_t m, double eps,
                      at::opmath_type<scalar_t>* out) {
  using T = at::opmath_type<scalar_t>;
  const Columns<T> c(b2, m);
  at::parallel_for(0, n, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      value_row<V, T>(c.col(0), c.col(1), c.col(2), c.col(3), c.col(4), c.col(5), box::load_box<T>(b1 + 4 * i),
                      static_cast<T>(eps), out + i * m, m);
    }
  });
}

template <typename scalar_t, int V>
void pairwise_backward(const at::opmath_type<scalar_t>* g, const scalar_t* b1, const scalar_t* b2,
                       int64_t n, int64_t m, double eps, scalar_t* g1, scalar_t* g2) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  const Columns<T> c(b2, m);
  // One pass over the pairs. The rows are split into a fixed number of parts, each with its own
  // column accumulators, summed in order at the end: no atomics, and the same result whatever
  // the thread count.
  const int64_t parts = std::min(n, kGradParts);
  std::vector<T> partial(parts * 4 * m, T(0));
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> ga(4 * m);
    for (int64_t p = begin; p < end; ++p) {
      T* gb = partial.data() + p * 4 * m;
      for (int64_t i = p * n / parts; i < (p + 1) * n / parts; ++i) {
        grad_row<V, T>(c.col(0), c.col(1), c.col(2), c.col(3), c.col(4), c.col(5), box::load_box<T>(b1 + 4 * i),
                       g + i * m, e, ga.data(), ga.data() + m, ga.data() + 2 * m, ga.data() + 3 * m, gb,
                       gb + m, gb + 2 * m, gb + 3 * m, m);
        for (int k = 0; k < 4; ++k) g1[4 * i + k] = static_cast<scalar_t>(sum(ga.data() + k * m, m));
      }
    }
  });
  at::parallel_for(0, m, grain_for(4 * parts), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      for (int k = 0; k < 4; ++k) {
        T s = T(0);
        for (int64_t p = 0; p < parts; ++p) s += partial[(p * 4 + k) * m + j];
        g2[4 * j + k] = static_cast<scalar_t>(s);
      }
    }
  });
}

template <typename scalar_t, int V>
void aligned_forward(const scalar_t* b1, const scalar_t* b2, int64_t n, double eps,
                     at::opmath_type<scalar_t>* out) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, kPairsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = box::pair_value<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), e, e);
    }
  });
}

template <typename scalar_t, int V>
void aligned_backward(const at::opmath_type<scalar_t>* g, const scalar_t* b1, const scalar_t* b2, int64_t n,
                      double eps, scalar_t* g1, scalar_t* g2) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, kPairsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Box<T> ga, gb;
      box::pair_grad<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i),
                        g[i], e, e, ga, gb);
      const T a4[4] = {ga.x1, ga.y1, ga.x2, ga.y2}, b4[4] = {gb.x1, gb.y1, gb.x2, gb.y2};
      for (int k = 0; k < 4; ++k) {
        g1[4 * i + k] = static_cast<scalar_t>(a4[k]);
        g2[4 * i + k] = static_cast<scalar_t>(b4[k]);
      }
    }
  });
}

at::Tensor pairwise_box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                                double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, false);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options().dtype(accumulate_type(boxes1.scalar_type())));
  if (n == 0 || m == 0) return out;
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "pairwise_box_iou_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      pairwise_forward<scalar_t, decltype(v)::value>(b1.const_data_ptr<scalar_t>(),
                                                     b2.const_data_ptr<scalar_t>(), n, m, eps,
                                                     out.mutable_data_ptr<at::opmath_type<scalar_t>>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_box_iou_backward_cpu(const at::Tensor& grad,
                                                                 const at::Tensor& boxes1,
                                                                 const at::Tensor& boxes2,
                                                                 c10::string_view kind, double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, false);
  check_box_iou_grad(grad, boxes1, boxes2, false);
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous(), g = grad.contiguous();
  auto g1 = at::zeros_like(b1), g2 = at::zeros_like(b2);
  const int64_t n = b1.size(0), m = b2.size(0);
  if (n == 0 || m == 0) return {g1, g2};
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "pairwise_box_iou_backward_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      pairwise_backward<scalar_t, decltype(v)::value>(
          g.const_data_ptr<at::opmath_type<scalar_t>>(), b1.const_data_ptr<scalar_t>(),
          b2.const_data_ptr<scalar_t>(), n, m, eps, g1.mutable_data_ptr<scalar_t>(),
          g2.mutable_data_ptr<scalar_t>());
    });
  });
  return {g1, g2};
}

at::Tensor aligned_box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                               double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, true);
  const int64_t n = boxes1.size(0);
  auto out = at::empty({n}, boxes1.options().dtype(accumulate_type(boxes1.scalar_type())));
  if (n == 0) return out;
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      aligned_forward<scalar_t, decltype(v)::value>(b1.const_data_ptr<scalar_t>(),
                                                    b2.const_data_ptr<scalar_t>(), n, eps,
                                                    out.mutable_data_ptr<at::opmath_type<scalar_t>>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> aligned_box_iou_backward_cpu(const at::Tensor& grad,
                                                                const at::Tensor& boxes1,
                                                                const at::Tensor& boxes2,
                                                                c10::string_view kind, double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, true);
  check_box_iou_grad(grad, boxes1, boxes2, true);
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous(), g = grad.contiguous();
  auto g1 = at::empty_like(b1), g2 = at::empty_like(b2);
  const int64_t n = b1.size(0);
  if (n == 0) return {g1, g2};
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_backward_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      aligned_backward<scalar_t, decltype(v)::value>(
          g.const_data_ptr<at::opmath_type<scalar_t>>(), b1.const_data_ptr<scalar_t>(),
          b2.const_data_ptr<scalar_t>(), n, eps, g1.mutable_data_ptr<scalar_t>(), g2.mutable_data_ptr<scalar_t>());
    });
  });
  return {g1, g2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("pairwise_box_iou", &pairwise_box_iou_cpu);
  m.impl("_pairwise_box_iou_backward", &pairwise_box_iou_backward_cpu);
  m.impl("aligned_box_iou", &aligned_box_iou_cpu);
  m.impl("_aligned_box_iou_backward", &aligned_box_iou_backward_cpu);
}

}  // namespace fastmtl
