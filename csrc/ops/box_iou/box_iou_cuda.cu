// CUDA kernels of the box IoU family. Pairwise forward writes the N x M output once, one
// coalesced store per element. Backward reduces each row in a block, and each column over a
// fixed number of row parts summed in order: no atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../common.h"
#include "../../kernels/box_math.h"
#include "box_iou.h"

namespace fastmtl {
namespace {

using box::Box;

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 16;  // each thread reuses its boxes2 entry for this many rows
constexpr int64_t kGradParts = 64;  // row parts of the column gradient, summed in a fixed order

int64_t blocks_for(int64_t n, int64_t per_block) { return (n + per_block - 1) / per_block; }

template <typename scalar_t, int V>
__global__ void pairwise_forward_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                                        int64_t n, int64_t m, at::opmath_type<scalar_t> eps,
                                        at::opmath_type<scalar_t>* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  // Rows on grid x (up to 2^31 blocks), columns on grid y (up to 65535 blocks).
  const int64_t j = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  const Box<T> b = box::load_box<T>(b2 + 4 * j);
  const box::BoxStats<T> sb = box::box_stats(b);
  const int64_t i0 = blockIdx.x * static_cast<int64_t>(kRowsPerBlock);
  const int64_t i1 = i0 + kRowsPerBlock < n ? i0 + kRowsPerBlock : n;
  for (int64_t i = i0; i < i1; ++i) {
    const Box<T> a = box::load_box<T>(b1 + 4 * i);
    out[i * m + j] = box::pair_value<V>(a, b, box::box_stats(a), sb, eps, T(0));
  }
}

template <typename T>
__device__ T block_sum(T v, T* shared) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0)
    for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  return total;  // valid in thread 0
}

// One block per row i: grad_boxes1[i] = sum_j g[i, j] * d value(i, j) / d boxes1[i].
template <typename scalar_t, int V>
__global__ void pairwise_backward_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                              const scalar_t* __restrict__ b1,
                                              const scalar_t* __restrict__ b2, int64_t m,
                                              at::opmath_type<scalar_t> eps, scalar_t* __restrict__ g1) {
  using T = at::opmath_type<scalar_t>;
  __shared__ T shared[kThreads / 32];
  const int64_t i = blockIdx.x;
  const Box<T> a = box::load_box<T>(b1 + 4 * i);
  const box::BoxStats<T> sa = box::box_stats(a);
  Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    const Box<T> b = box::load_box<T>(b2 + 4 * j);
    box::pair_grad<V>(a, b, sa, box::box_stats(b), g[i * m + j], eps, T(0), ga, gb);
    acc.x1 += ga.x1; acc.y1 += ga.y1; acc.x2 += ga.x2; acc.y2 += ga.y2;
  }
  const T s[4] = {block_sum(acc.x1, shared), block_sum(acc.y1, shared), block_sum(acc.x2, shared),
                  block_sum(acc.y2, shared)};
  if (threadIdx.x == 0)
    for (int k = 0; k < 4; ++k) g1[4 * i + k] = static_cast<scalar_t>(s[k]);
}

// Thread (j, part p) sums column j over the rows of part p into partial[p][k][j]; reads of g
// are coalesced across the warp at each row.
template <typename scalar_t, int V>
__global__ void pairwise_backward_cols_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                              const scalar_t* __restrict__ b1,
                                              const scalar_t* __restrict__ b2, int64_t n, int64_t m,
                                              int64_t parts, at::opmath_type<scalar_t> eps,
                                              at::opmath_type<scalar_t>* __restrict__ partial) {
  using T = at::opmath_type<scalar_t>;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  const int64_t p = blockIdx.y;
  const Box<T> b = box::load_box<T>(b2 + 4 * j);
  const box::BoxStats<T> sb = box::box_stats(b);
  Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
  for (int64_t i = p * n / parts; i < (p + 1) * n / parts; ++i) {
    const Box<T> a = box::load_box<T>(b1 + 4 * i);
    box::pair_grad<V>(a, b, box::box_stats(a), sb, g[i * m + j], eps, T(0), ga, gb);
    acc.x1 += gb.x1; acc.y1 += gb.y1; acc.x2 += gb.x2; acc.y2 += gb.y2;
  }
  T* out = partial + p * 4 * m + j;
  out[0] = acc.x1; out[m] = acc.y1; out[2 * m] = acc.x2; out[3 * m] = acc.y2;
}

template <typename scalar_t>
__global__ void sum_parts_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, int64_t m,
                                 int64_t parts, scalar_t* __restrict__ g2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (j >= m) return;
  for (int k = 0; k < 4; ++k) {
    T s = T(0);
    for (int64_t p = 0; p < parts; ++p) s += partial[(p * 4 + k) * m + j];
    g2[4 * j + k] = static_cast<scalar_t>(s);
  }
}

template <typename scalar_t, int V>
__global__ void aligned_forward_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                                       int64_t n, at::opmath_type<scalar_t> eps,
                                       at::opmath_type<scalar_t>* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  out[i] = box::pair_value<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), eps, eps);
}

template <typename scalar_t, int V>
__global__ void aligned_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                        const scalar_t* __restrict__ b1,
                                        const scalar_t* __restrict__ b2, int64_t n,
                                        at::opmath_type<scalar_t> eps, scalar_t* __restrict__ g1,
                                        scalar_t* __restrict__ g2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  Box<T> ga, gb;
  box::pair_grad<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), g[i], eps, eps, ga, gb);
  const T a4[4] = {ga.x1, ga.y1, ga.x2, ga.y2}, b4[4] = {gb.x1, gb.y1, gb.x2, gb.y2};
  for (int k = 0; k < 4; ++k) {
    g1[4 * i + k] = static_cast<scalar_t>(a4[k]);
    g2[4 * i + k] = static_cast<scalar_t>(b4[k]);
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t, int V>
void launch_pairwise_forward(const at::Tensor& b1, const at::Tensor& b2, double eps, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0), m = b2.size(0);
  TORCH_CHECK(blocks_for(m, kThreads) <= 65535, "boxes2 holds ", m, " boxes; at most ", 65535 * kThreads,
              " are supported on CUDA");
  const dim3 grid(blocks_for(n, kRowsPerBlock), blocks_for(m, kThreads));
  pairwise_forward_kernel<scalar_t, V><<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, m, static_cast<T>(eps),
      out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_pairwise_backward(const at::Tensor& g, const at::Tensor& b1, const at::Tensor& b2, double eps,
                              at::Tensor& g1, at::Tensor& g2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0), m = b2.size(0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t parts = std::min(n, kGradParts);
  const at::Tensor partial = at::empty({parts, 4, m}, b1.options().dtype(c10::CppTypeToScalarType<T>::value));
  pairwise_backward_rows_kernel<scalar_t, V><<<n, kThreads, 0, stream>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), m,
      static_cast<T>(eps), g1.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 grid(blocks_for(m, kThreads), parts);
  pairwise_backward_cols_kernel<scalar_t, V><<<grid, kThreads, 0, stream>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, m, parts,
      static_cast<T>(eps), partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_parts_kernel<scalar_t><<<blocks_for(m, kThreads), kThreads, 0, stream>>>(
      partial.const_data_ptr<T>(), m, parts, g2.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_aligned_forward(const at::Tensor& b1, const at::Tensor& b2, double eps, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0);
  aligned_forward_kernel<scalar_t, V><<<blocks_for(n, kThreads), kThreads, 0,
                                        c10::cuda::getCurrentCUDAStream()>>>(
      b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, static_cast<T>(eps),
      out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_aligned_backward(const at::Tensor& g, const at::Tensor& b1, const at::Tensor& b2, double eps,
                             at::Tensor& g1, at::Tensor& g2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0);
  aligned_backward_kernel<scalar_t, V><<<blocks_for(n, kThreads), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n,
      static_cast<T>(eps), g1.mutable_data_ptr<scalar_t>(), g2.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pairwise_box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t variant,
                                 double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, false);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  auto out = at::empty({boxes1.size(0), boxes2.size(0)},
                       boxes1.options().dtype(box_iou_accumulate_type(boxes1.scalar_type())));
  if (out.numel() == 0) return out;
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "pairwise_box_iou_cuda", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      launch_pairwise_forward<scalar_t, decltype(v)::value>(b1, b2, eps, out);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pairwise_box_iou_backward_cuda(const at::Tensor& grad,
                                                                  const at::Tensor& boxes1,
                                                                  const at::Tensor& boxes2,
                                                                  int64_t variant, double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, false);
  check_box_iou_grad(grad, boxes1, boxes2, false);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous(), g = grad.contiguous();
  auto g1 = at::empty_like(b1), g2 = at::empty_like(b2);
  if (b1.size(0) == 0 || b2.size(0) == 0) return {g1.zero_(), g2.zero_()};
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "pairwise_box_iou_backward_cuda", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      launch_pairwise_backward<scalar_t, decltype(v)::value>(g, b1, b2, eps, g1, g2);
    });
  });
  return {g1, g2};
}

at::Tensor aligned_box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t variant,
                                double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, true);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  auto out = at::empty({boxes1.size(0)}, boxes1.options().dtype(box_iou_accumulate_type(boxes1.scalar_type())));
  if (out.numel() == 0) return out;
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_cuda", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      launch_aligned_forward<scalar_t, decltype(v)::value>(b1, b2, eps, out);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> aligned_box_iou_backward_cuda(const at::Tensor& grad,
                                                                 const at::Tensor& boxes1,
                                                                 const at::Tensor& boxes2,
                                                                 int64_t variant, double eps) {
  check_box_iou_args(boxes1, boxes2, variant, eps, true);
  check_box_iou_grad(grad, boxes1, boxes2, true);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  const auto b1 = boxes1.contiguous(), b2 = boxes2.contiguous(), g = grad.contiguous();
  auto g1 = at::empty_like(b1), g2 = at::empty_like(b2);
  if (b1.size(0) == 0) return {g1, g2};
  FASTMTL_DISPATCH_BOXES(b1.scalar_type(), "aligned_box_iou_backward_cuda", [&] {
    box::dispatch_variant(variant, [&](auto v) {
      launch_aligned_backward<scalar_t, decltype(v)::value>(g, b1, b2, eps, g1, g2);
    });
  });
  return {g1, g2};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("pairwise_box_iou", &pairwise_box_iou_cuda);
  m.impl("_pairwise_box_iou_backward", &pairwise_box_iou_backward_cuda);
  m.impl("aligned_box_iou", &aligned_box_iou_cuda);
  m.impl("_aligned_box_iou_backward", &aligned_box_iou_backward_cuda);
}

}  // namespace fastmtl
