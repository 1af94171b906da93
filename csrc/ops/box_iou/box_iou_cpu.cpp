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

#include "../../kernels/box_math.h"
#include "box_iou.h"

namespace fastmtl {
namespace {

using box::Box;

// Enough pair evaluations per task to amortize the thread hand-off.
constexpr int64_t kPairsPerTask = 32768;

int64_t grain_for(int64_t inner) { return std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(inner, 1)); }

template <typename scalar_t, int V>
void pairwise_forward(const scalar_t* b1, const scalar_t* b2, int64_t n, int64_t m, double eps,
                      at::opmath_type<scalar_t>* out) {
  using T = at::opmath_type<scalar_t>;
  // boxes2 as columns x1 | y1 | x2 | y2 | area, so the inner loop reads unit-stride arrays.
  std::vector<T> cols(5 * m);
  T* __restrict__ x1 = cols.data();
  T* __restrict__ y1 = x1 + m;
  T* __restrict__ x2 = y1 + m;
  T* __restrict__ y2 = x2 + m;
  T* __restrict__ ar = y2 + m;
  for (int64_t j = 0; j < m; ++j) {
    const Box<T> b = box::load_box<T>(b2 + 4 * j);
    x1[j] = b.x1; y1[j] = b.y1; x2[j] = b.x2; y2[j] = b.y2; ar[j] = box::area(b);
  }
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Box<T> a = box::load_box<T>(b1 + 4 * i);
      const T area_a = box::area(a);
      T* __restrict__ row = out + i * m;
      for (int64_t j = 0; j < m; ++j) {
        row[j] = box::pair_value<V>(a, Box<T>{x1[j], y1[j], x2[j], y2[j]}, area_a, ar[j], e, T(0));
      }
    }
  });
}

template <typename scalar_t, int V>
void pairwise_backward(const at::opmath_type<scalar_t>* g, const scalar_t* b1, const scalar_t* b2,
                       int64_t n, int64_t m, double eps, scalar_t* g1, scalar_t* g2) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  // d/d boxes1[i] sums over row i; d/d boxes2[j] sums over column j. Two passes keep each
  // output owned by one thread (no atomics, deterministic).
  at::parallel_for(0, n, grain_for(m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Box<T> a = box::load_box<T>(b1 + 4 * i);
      Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
      for (int64_t j = 0; j < m; ++j) {
        box::pair_grad<V>(a, box::load_box<T>(b2 + 4 * j), g[i * m + j], e, T(0), ga, gb);
        acc.x1 += ga.x1; acc.y1 += ga.y1; acc.x2 += ga.x2; acc.y2 += ga.y2;
      }
      g1[4 * i] = acc.x1; g1[4 * i + 1] = acc.y1; g1[4 * i + 2] = acc.x2; g1[4 * i + 3] = acc.y2;
    }
  });
  at::parallel_for(0, m, grain_for(n), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const Box<T> b = box::load_box<T>(b2 + 4 * j);
      Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
      for (int64_t i = 0; i < n; ++i) {
        box::pair_grad<V>(box::load_box<T>(b1 + 4 * i), b, g[i * m + j], e, T(0), ga, gb);
        acc.x1 += gb.x1; acc.y1 += gb.y1; acc.x2 += gb.x2; acc.y2 += gb.y2;
      }
      g2[4 * j] = acc.x1; g2[4 * j + 1] = acc.y1; g2[4 * j + 2] = acc.x2; g2[4 * j + 3] = acc.y2;
    }
  });
}

template <typename scalar_t, int V>
void aligned_forward(const scalar_t* b1, const scalar_t* b2, int64_t n, double eps, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, kPairsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      out[i] = static_cast<scalar_t>(
          box::pair_value<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), e, e));
    }
  });
}

template <typename scalar_t, int V>
void aligned_backward(const scalar_t* g, const scalar_t* b1, const scalar_t* b2, int64_t n, double eps,
                      scalar_t* g1, scalar_t* g2) {
  using T = at::opmath_type<scalar_t>;
  const T e = static_cast<T>(eps);
  at::parallel_for(0, n, kPairsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      Box<T> ga, gb;
      box::pair_grad<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i),
                        static_cast<T>(g[i]), e, e, ga, gb);
      const T a4[4] = {ga.x1, ga.y1, ga.x2, ga.y2}, b4[4] = {gb.x1, gb.y1, gb.x2, gb.y2};
      for (int k = 0; k < 4; ++k) {
        g1[4 * i + k] = static_cast<scalar_t>(a4[k]);
        g2[4 * i + k] = static_cast<scalar_t>(b4[k]);
      }
    }
  });
}

#define FASTMTL_DISPATCH_BOXES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

at::Tensor pairwise_box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t variant,
                                double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, false);
  const int64_t n = boxes1.size(0), m = boxes2.size(0);
  auto out = at::empty({n, m}, boxes1.options().dtype(box_iou_accumulate_type(boxes1.scalar_type())));
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
                                                                 int64_t variant, double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, false);
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

at::Tensor aligned_box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t variant,
                               double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, true);
  const int64_t n = boxes1.size(0);
  auto out = at::empty({n}, boxes1.options());
  if (n == 0) return out;
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      aligned_forward<scalar_t, decltype(v)::value>(b1.const_data_ptr<scalar_t>(),
                                                    b2.const_data_ptr<scalar_t>(), n, eps,
                                                    out.mutable_data_ptr<scalar_t>());
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> aligned_box_iou_backward_cpu(const at::Tensor& grad,
                                                                const at::Tensor& boxes1,
                                                                const at::Tensor& boxes2,
                                                                int64_t variant, double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, true);
  check_box_iou_grad(grad, boxes1, boxes2, true);
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous(), g = grad.contiguous();
  auto g1 = at::empty_like(b1), g2 = at::empty_like(b2);
  const int64_t n = b1.size(0);
  if (n == 0) return {g1, g2};
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_backward_cpu", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      aligned_backward<scalar_t, decltype(v)::value>(
          g.const_data_ptr<scalar_t>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n,
          eps, g1.mutable_data_ptr<scalar_t>(), g2.mutable_data_ptr<scalar_t>());
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
