// CUDA kernels of the Gram matrix and style loss: cuBLAS products through ATen (gram.cpp) and
// the per-element passes around them. The row sums of the loss are added in a fixed order: no
// atomics, deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <algorithm>
#include <tuple>

#include "../../kernels/gram.h"
#include "../checks.h"
#include "../common.h"
#include "gram.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;

// out[n, i, j] = scale * U[n, min(i,j), max(i,j)], grid-stride over the N * C * C elements.
template <typename scalar_t>
__global__ void mirror_kernel(const at::opmath_type<scalar_t>* __restrict__ u, int64_t total, int64_t c,
                              at::opmath_type<scalar_t> scale, scalar_t* __restrict__ out) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % c, i = (e / c) % c, s = e / (c * c);
    out[e] = static_cast<scalar_t>(gram::gram_value(u + s * c * c, i, j, c, scale));
  }
}

// m[n] = coef_n * (d[n] + d[n]^T), coef_n = coef * (per_sample ? per_sample[n] : 1).
template <typename T>
__global__ void symmetrize_kernel(const T* __restrict__ d, const T* __restrict__ per_sample, int64_t total,
                                  int64_t c, T coef, T* __restrict__ m) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % c, i = (e / c) % c, s = e / (c * c);
    const T k = per_sample ? coef * per_sample[s] : coef;
    m[e] = gram::symmetric_grad(d + s * c * c, i, j, c, k);
  }
}

// Blocks stride over the N * C rows r = s * c + i (a 1-D grid: gridDim.y would cap N at 65535):
// diff[s, i, :] = a * U - target, rows[r] = sum of squares.
template <typename T>
__global__ void style_rows_kernel(const T* __restrict__ u, const T* __restrict__ target, int64_t target_stride,
                                  int64_t n, int64_t c, T a, T* __restrict__ diff, T* __restrict__ rows) {
  using BlockSum = cub::BlockReduce<T, kThreads>;
  __shared__ typename BlockSum::TempStorage storage;
  for (int64_t r = blockIdx.x; r < n * c; r += gridDim.x) {
    const int64_t s = r / c, i = r % c;
    const T* us = u + s * c * c;
    const T* ts = target + s * target_stride;
    T* o = diff + r * c;
    T acc = T(0);
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
      const T v = gram::style_diff(us, ts, i, j, c, a);
      o[j] = v;
      acc += v * v;
    }
    const T total = BlockSum(storage).Sum(acc);  // valid in thread 0
    if (threadIdx.x == 0) rows[r] = total;
    __syncthreads();  // the storage is reused by the next row
  }
}

// loss[s] = scale * sum of the row sums of sample s, in row order.
template <typename T>
__global__ void style_sum_kernel(const T* __restrict__ rows, int64_t n, int64_t c, double scale,
                                 T* __restrict__ loss) {
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < n;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    double total = 0.0;
    for (int64_t i = 0; i < c; ++i) total += static_cast<double>(rows[s * c + i]);
    loss[s] = static_cast<T>(scale * total);
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t>
void launch_mirror(const at::Tensor& u, double scale, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = out.numel(), c = out.size(1);
  mirror_kernel<scalar_t><<<grid_stride_blocks(total, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      u.const_data_ptr<T>(), total, c, static_cast<T>(scale), out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_symmetrize(const at::Tensor& d, const T* per_sample, double coef, at::Tensor& m) {
  const int64_t total = m.numel(), c = m.size(1);
  symmetrize_kernel<T><<<grid_stride_blocks(total, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      d.const_data_ptr<T>(), per_sample, total, c, static_cast<T>(coef), m.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_style_forward(const at::Tensor& u, const at::Tensor& t, gram::StyleScales k, at::Tensor& diff,
                          at::Tensor& loss) {
  const int64_t n = diff.size(0), c = diff.size(1);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor rows = at::empty({n, c}, diff.options());
  style_rows_kernel<T><<<grid_stride_blocks(n * c, 1), kThreads, 0, stream>>>(
      u.const_data_ptr<T>(), t.const_data_ptr<T>(), t.dim() == 3 ? c * c : 0, n, c, static_cast<T>(k.a),
      diff.mutable_data_ptr<T>(), rows.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  style_sum_kernel<T><<<grid_stride_blocks(n, kThreads), kThreads, 0, stream>>>(
      rows.const_data_ptr<T>(), n, c, k.s, loss.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gram_matrix_cuda(const at::Tensor& features, bool normalize) {
  check_gram_features(features);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  auto out = at::empty({n, c, c}, features.options());
  if (out.numel() == 0) return out;
  const at::Tensor u = gram_upper(features);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "gram_matrix_cuda", [&] {
    launch_mirror<scalar_t>(u, gram::gram_scale(c, p, normalize), out);
  });
  return out;
}

at::Tensor gram_matrix_backward_cuda(const at::Tensor& grad, const at::Tensor& features, bool normalize) {
  check_gram_grad(grad, features);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  auto m = at::empty({n, c, c}, grad.options().dtype(acc));
  if (features.numel() == 0) return symmetric_times_features(m, features);
  const at::Tensor g = grad.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "gram_matrix_backward_cuda", [&] {
    launch_symmetrize<scalar_t>(g, nullptr, gram::gram_scale(c, p, normalize), m);
  });
  return symmetric_times_features(m, features);
}

std::tuple<at::Tensor, at::Tensor> style_loss_cuda(const at::Tensor& features, const at::Tensor& target_gram,
                                                   c10::string_view normalization) {
  const gram::Normalization norm = check_style_args(features, target_gram, normalization);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  auto loss = at::zeros({n}, features.options().dtype(acc));
  auto diff = at::empty({n, c, c}, features.options().dtype(acc));
  if (diff.numel() == 0) return {loss, diff};
  const at::Tensor u = gram_upper(features);
  const at::Tensor t = target_gram.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "style_loss_cuda", [&] {
    launch_style_forward<scalar_t>(u, t, gram::style_scales(norm, c, p), diff, loss);
  });
  return {loss, diff};
}

at::Tensor style_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& features,
                                    c10::string_view normalization) {
  const gram::Normalization norm = check_style_grad(grad, diff, features, normalization);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  auto m = at::empty({n, c, c}, diff.options());
  if (features.numel() == 0) return symmetric_times_features(m, features);
  const at::Tensor g = grad.contiguous(), d = diff.contiguous();
  const gram::StyleScales k = gram::style_scales(norm, c, p);
  AT_DISPATCH_FLOATING_TYPES(acc, "style_loss_backward_cuda", [&] {
    launch_symmetrize<scalar_t>(d, g.const_data_ptr<scalar_t>(), 2.0 * k.s * k.a, m);
  });
  return symmetric_times_features(m, features);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("gram_matrix", &gram_matrix_cuda);
  m.impl("_gram_matrix_backward", &gram_matrix_backward_cuda);
  m.impl("style_loss", &style_loss_cuda);
  m.impl("_style_loss_backward", &style_loss_backward_cuda);
}

}  // namespace fastmtl
