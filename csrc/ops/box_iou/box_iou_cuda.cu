// CUDA kernels of the box IoU family. Pairwise forward writes the N x M output once, one
// coalesced store per element. Backward reduces each row in a block, and each column over a
// fixed number of row parts summed in order: no atomics, deterministic.
//
// Per-box values (width, height, centre, area and, for CIoU, the arctangent of the aspect ratio:
// box::BoxGeom) are not recomputed per pair. The forward and the column-gradient kernel keep their
// thread's column in registers and compute a tile of rows once per block into shared memory. The
// row-gradient kernel (one row per block, every column) keeps its row's and rebuilds each column's
// from its corners (a few adds, cheaper than loading them) and its arctangent, which a small kernel
// computes once per box for the backward. Same expressions as the CPU kernel, so the same bits (the
// build disables FMA contraction on both devices).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <climits>

#include "../checks.h"
#include "../common.h"
#include "../../kernels/box_math.h"
#include "box_iou.h"

namespace fastmtl {
namespace {

using box::Box;
using box::BoxGeom;

constexpr int kThreads = 256;
constexpr int kRowsPerTile = 32;    // rows of the forward tile whose BoxGeoms sit in shared memory
constexpr int64_t kGradParts = 64;  // row parts of the column gradient, summed in a fixed order

// BoxGeom of box i for variant V, its arctangent read from aspect (filled by aspect_kernel;
// only CIoU reads it, the other variants may pass nullptr).
template <int V, typename T, typename scalar_t>
__device__ __forceinline__ BoxGeom<T> geom_at(const scalar_t* __restrict__ boxes, const T* __restrict__ aspect,
                                              int64_t i) {
  const Box<T> b = box::load_box<T>(boxes + 4 * i);
  if constexpr (V == box::kCIoU) {
    return box::box_geom(b, box::area(b), aspect[i]);
  } else {
    return box::box_geom(b, box::area(b), T(0));
  }
}

// One block per (column tile, row group): its thread j keeps the BoxGeom of boxes2[j] in registers
// for all its row tiles; each row tile's BoxGeoms are computed once into shared memory.
// Grid: col_tiles * row_groups blocks (1-D, so no 65535 limit on either count).
template <typename scalar_t, int V>
__global__ void pairwise_forward_kernel(const scalar_t* __restrict__ b1, const scalar_t* __restrict__ b2,
                                        int64_t n, int64_t m, int64_t col_tiles, at::opmath_type<scalar_t> eps,
                                        at::opmath_type<scalar_t>* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  __shared__ BoxGeom<T> rows[kRowsPerTile];
  const int64_t row_tiles = ceil_div(n, kRowsPerTile);
  const int64_t row_groups = gridDim.x / col_tiles;
  const int64_t j = (blockIdx.x % col_tiles) * kThreads + threadIdx.x;
  const bool live = j < m;
  BoxGeom<T> gb{};
  if (live) gb = box::box_geom<V>(box::load_box<T>(b2 + 4 * j));
  // The loop bounds depend on the block only: every thread reaches every barrier.
  for (int64_t rt = blockIdx.x / col_tiles; rt < row_tiles; rt += row_groups) {
    const int64_t i0 = rt * kRowsPerTile;
    const int rows_here = static_cast<int>(n - i0 < kRowsPerTile ? n - i0 : kRowsPerTile);
    __syncthreads();  // the previous tile's rows have been read
    if (threadIdx.x < rows_here) rows[threadIdx.x] = box::box_geom<V>(box::load_box<T>(b1 + 4 * (i0 + threadIdx.x)));
    __syncthreads();
    if (live) {
      for (int r = 0; r < rows_here; ++r) out[(i0 + r) * m + j] = box::pair_value<V>(rows[r], gb, eps, T(0));
    }
  }
}

// aspect[i] = atan(w / h) of boxes1[i] for i < n, of boxes2[i - n] after: the CIoU arctangents of
// the backward, once per box.
template <typename scalar_t>
__global__ void aspect_kernel(const scalar_t* __restrict__ b1, int64_t n, const scalar_t* __restrict__ b2,
                              int64_t m, at::opmath_type<scalar_t>* __restrict__ aspect) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n + m; i += int64_t(gridDim.x) * blockDim.x) {
    aspect[i] = box::box_aspect(box::load_box<T>(i < n ? b1 + 4 * i : b2 + 4 * (i - n)));
  }
}

// Coordinate-wise sum of two box gradients, for the block reduction of a row.
template <typename T>
struct BoxSum {
  __device__ Box<T> operator()(const Box<T>& a, const Box<T>& b) const {
    return {a.x1 + b.x1, a.y1 + b.y1, a.x2 + b.x2, a.y2 + b.y2};
  }
};

// Row i (blocks stride over the rows): grad_boxes1[i] = sum_j g[i, j] * d value(i, j) / d boxes1[i].
// Row i's BoxGeom once per block; column j's from its corners and its buffered arctangent.
template <typename scalar_t, int V>
__global__ void pairwise_backward_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                              const scalar_t* __restrict__ b1,
                                              const scalar_t* __restrict__ b2, int64_t n, int64_t m,
                                              const at::opmath_type<scalar_t>* __restrict__ aspect1,
                                              const at::opmath_type<scalar_t>* __restrict__ aspect2,
                                              at::opmath_type<scalar_t> eps, scalar_t* __restrict__ g1) {
  using T = at::opmath_type<scalar_t>;
  using BlockSum = cub::BlockReduce<Box<T>, kThreads>;
  __shared__ typename BlockSum::TempStorage storage;
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {  // block-uniform: the barriers are safe
    const BoxGeom<T> sa = geom_at<V>(b1, aspect1, i);
    Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      box::pair_grad<V>(sa, geom_at<V>(b2, aspect2, j), g[i * m + j], eps, T(0), ga, gb);
      acc.x1 += ga.x1; acc.y1 += ga.y1; acc.x2 += ga.x2; acc.y2 += ga.y2;
    }
    const Box<T> s = BlockSum(storage).Reduce(acc, BoxSum<T>{});  // valid in thread 0
    if (threadIdx.x == 0) {
      g1[4 * i] = static_cast<scalar_t>(s.x1);
      g1[4 * i + 1] = static_cast<scalar_t>(s.y1);
      g1[4 * i + 2] = static_cast<scalar_t>(s.x2);
      g1[4 * i + 3] = static_cast<scalar_t>(s.y2);
    }
    __syncthreads();  // storage is reused by the next row
  }
}

// Thread (j, part p) sums column j over the rows of part p into partial[p][k][j]; reads of g
// are coalesced across the warp at each row. Column j's BoxGeom stays in registers; the rows'
// are computed once per block, kThreads at a time, into shared memory.
template <typename scalar_t, int V>
__global__ void pairwise_backward_cols_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                              const scalar_t* __restrict__ b1,
                                              const scalar_t* __restrict__ b2, int64_t n, int64_t m,
                                              int64_t parts, const at::opmath_type<scalar_t>* __restrict__ aspect1,
                                              const at::opmath_type<scalar_t>* __restrict__ aspect2,
                                              at::opmath_type<scalar_t> eps,
                                              at::opmath_type<scalar_t>* __restrict__ partial) {
  using T = at::opmath_type<scalar_t>;
  __shared__ BoxGeom<T> rows[kThreads];
  const int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool live = j < m;
  const int64_t p = blockIdx.y;
  BoxGeom<T> sb{};
  if (live) sb = geom_at<V>(b2, aspect2, j);
  Box<T> acc{T(0), T(0), T(0), T(0)}, ga, gb;
  const int64_t first = p * n / parts, last = (p + 1) * n / parts;
  for (int64_t i0 = first; i0 < last; i0 += kThreads) {  // block-uniform bounds
    const int rows_here = static_cast<int>(last - i0 < kThreads ? last - i0 : kThreads);
    __syncthreads();  // the previous chunk's rows have been read
    if (threadIdx.x < rows_here) rows[threadIdx.x] = geom_at<V>(b1, aspect1, i0 + threadIdx.x);
    __syncthreads();
    if (live) {
      for (int r = 0; r < rows_here; ++r) {
        box::pair_grad<V>(rows[r], sb, g[(i0 + r) * m + j], eps, T(0), ga, gb);
        acc.x1 += gb.x1; acc.y1 += gb.y1; acc.x2 += gb.x2; acc.y2 += gb.y2;
      }
    }
  }
  if (!live) return;
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
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = box::pair_value<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), eps, eps);
}

template <typename scalar_t, int V>
__global__ void aligned_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ g,
                                        const scalar_t* __restrict__ b1,
                                        const scalar_t* __restrict__ b2, int64_t n,
                                        at::opmath_type<scalar_t> eps, scalar_t* __restrict__ g1,
                                        scalar_t* __restrict__ g2) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Box<T> ga, gb;
    box::pair_grad<V>(box::load_box<T>(b1 + 4 * i), box::load_box<T>(b2 + 4 * i), g[i], eps, eps, ga, gb);
    const T a4[4] = {ga.x1, ga.y1, ga.x2, ga.y2}, b4[4] = {gb.x1, gb.y1, gb.x2, gb.y2};
    for (int k = 0; k < 4; ++k) {
      g1[4 * i + k] = static_cast<scalar_t>(a4[k]);
      g2[4 * i + k] = static_cast<scalar_t>(b4[k]);
    }
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t, int V>
void launch_pairwise_forward(const at::Tensor& b1, const at::Tensor& b2, double eps, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0), m = b2.size(0);
  const int64_t col_tiles = ceil_div(m, kThreads), row_tiles = ceil_div(n, kRowsPerTile);
  TORCH_CHECK(col_tiles <= INT_MAX, "boxes2 holds ", m, " boxes; at most ", int64_t(INT_MAX) * kThreads,
              " are supported on CUDA");
  // Row groups fill the grid up to about kMaxGridBlocks blocks; the blocks of a group loop over its tiles.
  const int64_t row_groups = std::max<int64_t>(1, std::min(row_tiles, kMaxGridBlocks / col_tiles));
  const int64_t blocks = col_tiles * std::min<int64_t>(row_groups, INT_MAX / col_tiles);
  pairwise_forward_kernel<scalar_t, V><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, m, col_tiles, static_cast<T>(eps),
      out.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_pairwise_backward(const at::Tensor& g, const at::Tensor& b1, const at::Tensor& b2, double eps,
                              at::Tensor& g1, at::Tensor& g2) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0), m = b2.size(0);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opmath = b1.options().dtype(c10::CppTypeToScalarType<T>::value);
  TORCH_CHECK(ceil_div(m, kThreads) <= INT_MAX, "boxes2 holds ", m, " boxes; at most ",
              int64_t(INT_MAX) * kThreads, " are supported on CUDA");
  // CIoU: the arctangent of every box once, for both kernels.
  const T* aspect1 = nullptr;
  const T* aspect2 = nullptr;
  at::Tensor aspect;
  if constexpr (V == box::kCIoU) {
    aspect = at::empty({n + m}, opmath);
    aspect_kernel<scalar_t><<<grid_stride_blocks(n + m, kThreads), kThreads, 0, stream>>>(
        b1.const_data_ptr<scalar_t>(), n, b2.const_data_ptr<scalar_t>(), m, aspect.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    aspect1 = aspect.const_data_ptr<T>();
    aspect2 = aspect1 + n;
  }
  const int64_t parts = std::min(n, kGradParts);
  const at::Tensor partial = at::empty({parts, 4, m}, opmath);
  pairwise_backward_rows_kernel<scalar_t, V><<<grid_stride_blocks(n, 1), kThreads, 0, stream>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, m, aspect1, aspect2,
      static_cast<T>(eps), g1.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const dim3 grid(ceil_div(m, kThreads), parts);  // parts <= 64 on y
  pairwise_backward_cols_kernel<scalar_t, V><<<grid, kThreads, 0, stream>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n, m, parts, aspect1,
      aspect2, static_cast<T>(eps), partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sum_parts_kernel<scalar_t><<<ceil_div(m, kThreads), kThreads, 0, stream>>>(
      partial.const_data_ptr<T>(), m, parts, g2.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, int V>
void launch_aligned_forward(const at::Tensor& b1, const at::Tensor& b2, double eps, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = b1.size(0);
  aligned_forward_kernel<scalar_t, V><<<grid_stride_blocks(n, kThreads), kThreads, 0,
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
  aligned_backward_kernel<scalar_t, V><<<grid_stride_blocks(n, kThreads), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<T>(), b1.const_data_ptr<scalar_t>(), b2.const_data_ptr<scalar_t>(), n,
      static_cast<T>(eps), g1.mutable_data_ptr<scalar_t>(), g2.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pairwise_box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                                 double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, false);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  auto out = at::empty({boxes1.size(0), boxes2.size(0)},
                       boxes1.options().dtype(accumulate_type(boxes1.scalar_type())));
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
                                                                  c10::string_view kind, double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, false);
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

at::Tensor aligned_box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                                double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, true);
  const c10::cuda::CUDAGuard guard(boxes1.device());
  auto out = at::empty({boxes1.size(0)}, boxes1.options().dtype(accumulate_type(boxes1.scalar_type())));
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
                                                                 c10::string_view kind, double eps) {
  const box::Variant variant = check_box_iou_args(boxes1, boxes2, kind, eps, true);
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
