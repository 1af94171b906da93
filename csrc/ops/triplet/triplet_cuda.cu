// CUDA kernels of the fused batch triplet loss: distances from the Gram matrix (a thread per
// pair), then a thread per anchor row for the mining, loss, statistics and gradient weights (the
// shared header's anchor_row: each row is one thread's sequential pass, so the sums have a fixed
// order and no atomics). The matrix products are cuBLAS through ATen (triplet.cpp).
// A row costs O(P N) steps (its positives times its negatives): at B = 4096 with 4 samples per
// identity that is 12k steps per thread; batches of two classes cost O(B^2) per thread.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common.h"
#include "triplet.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void triplet_distances_kernel(const T* __restrict__ x, const T* __restrict__ norms, T* __restrict__ g,
                                         int64_t b, int64_t dim, int metric) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < b * b; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = k / b, j = k % b;
    g[k] = triplet::pair_distance(metric, x + i * dim, x + j * dim, dim, norms[i], norms[j], g[k]);
  }
}

template <typename T>
__global__ void triplet_rows_kernel(const T* __restrict__ d, const int64_t* __restrict__ labels, int64_t b, T margin,
                                    int mining, int metric, T* __restrict__ w, T* __restrict__ loss,
                                    double* __restrict__ stats) {
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < b; a += int64_t(gridDim.x) * blockDim.x) {
    triplet::anchor_row(d + a * b, labels, b, a, margin, mining, metric, w + a * b).store(a, loss, stats);
  }
}

// Batch-hard: a thread per anchor row writes its compact pair (no B x B weights).
template <typename T>
__global__ void triplet_hard_kernel(const T* __restrict__ d, const int64_t* __restrict__ labels, int64_t b, T margin,
                                    int metric, T* __restrict__ w, int64_t* __restrict__ pairs, T* __restrict__ loss,
                                    double* __restrict__ stats) {
  for (int64_t a = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; a < b; a += int64_t(gridDim.x) * blockDim.x) {
    triplet::HardPair<T> pair;
    triplet::hard_row(d + a * b, labels, b, a, margin, metric, pair).store(a, loss, stats);
    if (w == nullptr) continue;
    pairs[2 * a] = pair.p;
    pairs[2 * a + 1] = pair.n;
    w[2 * a] = pair.wp;
    w[2 * a + 1] = pair.wn;
  }
}

template <typename T>
void launch_distances(const at::Tensor& x, const at::Tensor& norms, at::Tensor& gram, int metric) {
  const int64_t b = x.size(0);
  triplet_distances_kernel<T><<<grid_stride_blocks(b * b, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<T>(), norms.const_data_ptr<T>(), gram.mutable_data_ptr<T>(), b, x.size(1), metric);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_rows(const at::Tensor& d, const at::Tensor& labels, double margin, int mining, int metric, at::Tensor& w,
                 at::Tensor& loss, at::Tensor& stats) {
  const int64_t b = d.size(0);
  triplet_rows_kernel<T><<<grid_stride_blocks(b, 128), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
      d.const_data_ptr<T>(), labels.const_data_ptr<int64_t>(), b, static_cast<T>(margin), mining, metric,
      w.mutable_data_ptr<T>(), loss.mutable_data_ptr<T>(), stats.mutable_data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void rows_cuda(const at::Tensor& x, const at::Tensor& norms, at::Tensor& d, const at::Tensor& labels, double margin,
               int mining, int metric, at::Tensor& w, at::Tensor& loss, at::Tensor& stats) {
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "triplet_rows_cuda", [&] {
    launch_distances<scalar_t>(x, norms, d, metric);
    launch_rows<scalar_t>(d, labels, margin, mining, metric, w, loss, stats);
  });
}

// Batch-hard on the GPU keeps the whole B x B distance matrix while the rows are mined (one
// cuBLAS product); only its output is compact.
void hard_rows_cuda(const at::Tensor& x, const at::Tensor& norms, const at::Tensor& labels, double margin, int metric,
                    bool compute_grad, at::Tensor& w, at::Tensor& pairs, at::Tensor& loss, at::Tensor& stats) {
  const int64_t b = x.size(0);
  at::Tensor d = at::mm(x, x.t()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "triplet_hard_cuda", [&] {
    launch_distances<scalar_t>(x, norms, d, metric);
    triplet_hard_kernel<scalar_t><<<grid_stride_blocks(b, 128), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
        d.const_data_ptr<scalar_t>(), labels.const_data_ptr<int64_t>(), b, static_cast<scalar_t>(margin), metric,
        compute_grad ? w.mutable_data_ptr<scalar_t>() : nullptr,
        compute_grad ? pairs.mutable_data_ptr<int64_t>() : nullptr, loss.mutable_data_ptr<scalar_t>(),
        stats.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_margin_loss_cuda(
    const at::Tensor& embeddings, const at::Tensor& labels, double margin, c10::string_view mining,
    c10::string_view distance, bool compute_grad) {
  const c10::cuda::CUDAGuard guard(embeddings.device());
  static const TripletKernels kernels{&rows_cuda, &hard_rows_cuda};
  return triplet_forward(embeddings, labels, margin, mining, distance, compute_grad, kernels);
}

at::Tensor triplet_margin_loss_backward_cuda(const at::Tensor& grad_loss, const at::Tensor& weights,
                                             const at::Tensor& pairs, const at::Tensor& embeddings,
                                             c10::string_view distance) {
  const c10::cuda::CUDAGuard guard(embeddings.device());
  return triplet_backward(grad_loss, weights, pairs, embeddings, distance);
}

template <typename scalar_t>
__global__ void triplet_loss_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ p,
                                    const scalar_t* __restrict__ n, int64_t b, int64_t dim,
                                    at::opmath_type<scalar_t> margin, at::opmath_type<scalar_t> pnorm,
                                    at::opmath_type<scalar_t> eps, bool swap, at::opmath_type<scalar_t>* __restrict__ loss,
                                    at::opmath_type<scalar_t>* __restrict__ g) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < b; i += int64_t(gridDim.x) * blockDim.x) {
    auto* gi = g ? g + i * dim : nullptr;
    loss[i] = triplet::explicit_row(a + i * dim, p + i * dim, n + i * dim, dim, margin, pnorm, eps, swap, gi,
                                    g ? gi + b * dim : nullptr, g ? gi + 2 * b * dim : nullptr);
  }
}

template <typename scalar_t>
void launch_explicit(ExplicitArgs& x, double margin, double pnorm, double eps, bool swap, bool compute_grad) {
  using T = at::opmath_type<scalar_t>;
  const int64_t b = x.a.size(0);
  triplet_loss_kernel<scalar_t><<<grid_stride_blocks(b, 128), 128, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.a.const_data_ptr<scalar_t>(), x.p.const_data_ptr<scalar_t>(), x.n.const_data_ptr<scalar_t>(), b, x.a.size(1),
      static_cast<T>(margin), static_cast<T>(pnorm), static_cast<T>(eps), swap, x.loss.mutable_data_ptr<T>(),
      compute_grad ? x.grads.mutable_data_ptr<T>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> triplet_loss_cuda(const at::Tensor& anchor, const at::Tensor& positive,
                                                     const at::Tensor& negative, double margin, double pnorm,
                                                     double eps, bool swap, bool compute_grad) {
  const c10::cuda::CUDAGuard guard(anchor.device());
  ExplicitArgs x = check_explicit_args(anchor, positive, negative, margin, pnorm, eps, compute_grad);
  if (anchor.size(0) > 0)
    FASTMTL_DISPATCH_BOXES(x.a.scalar_type(), "triplet_loss_cuda",
                           [&] { launch_explicit<scalar_t>(x, margin, pnorm, eps, swap, compute_grad); });
  return {x.loss, x.grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("triplet_loss", &triplet_loss_cuda);
  m.impl("triplet_margin_loss", &triplet_margin_loss_cuda);
  m.impl("_triplet_margin_loss_backward", &triplet_margin_loss_backward_cuda);
}

}  // namespace fastmtl
