// CUDA kernels of the fused YOLOv1 loss. Forward: blocks stride over images, the threads of a
// block over the image's cells, each cell's terms and gradient from the shared header; the terms
// are reduced per image with cub (a fixed order: deterministic, no atomics). Counts outside
// [0, max_boxes] are clamped (the CPU kernel rejects them; reading them here would sync).
// Backward: one grid-stride pass scaling the saved gradient.
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

#include <tuple>

#include "../checks.h"
#include "../common.h"
#include "yolo_v1.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 64;  // a 7 x 7 or 13 x 13 grid fills one or three warps-worth per image

template <typename scalar_t>
__global__ void yolo_v1_forward_kernel(const scalar_t* __restrict__ pred, const at::opmath_type<scalar_t>* __restrict__ targets,
                                       const int64_t* __restrict__ counts, int64_t n, int64_t max_boxes,
                                       yolo::Params<at::opmath_type<scalar_t>> q, at::opmath_type<scalar_t>* __restrict__ terms,
                                       scalar_t* __restrict__ grad, int8_t* __restrict__ responsible) {
  using T = at::opmath_type<scalar_t>;
  using BlockSum = cub::BlockReduce<T, kThreads>;
  __shared__ typename BlockSum::TempStorage storage;
  const int64_t cells = int64_t(q.grid_h) * q.grid_w, values = q.values();
  for (int64_t img = blockIdx.x; img < n; img += gridDim.x) {
    const T* t = targets + 5 * img * max_boxes;
    const int64_t raw = counts[img];
    const int64_t count = raw < 0 ? 0 : (raw > max_boxes ? max_boxes : raw);
    T sums[yolo::kTerms] = {};
    for (int64_t cell = threadIdx.x; cell < cells; cell += blockDim.x) {
      const int i = static_cast<int>(cell / q.grid_w), j = static_cast<int>(cell % q.grid_w);
      const int64_t k = yolo::cell_object(t, count, i, j, q.grid_h, q.grid_w);
      const int64_t at = img * cells + cell;
      const int r = yolo::cell_loss(pred + at * values, k >= 0 ? t + 5 * k : nullptr, i, j, q, sums,
                                    grad ? grad + at * values : nullptr);
      responsible[at] = static_cast<int8_t>(r);
    }
    for (int term = 0; term < yolo::kTerms; ++term) {
      const T total = BlockSum(storage).Sum(sums[term]);  // valid in thread 0
      if (threadIdx.x == 0) terms[yolo::kTerms * img + term] = total;
      __syncthreads();  // the storage is reused
    }
  }
}

template <typename scalar_t>
__global__ void yolo_v1_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_terms,
                                        const scalar_t* __restrict__ grad, const int8_t* __restrict__ responsible,
                                        int64_t total, int64_t values, int64_t cells_per_image, int boxes,
                                        scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t at = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; at < total; at += int64_t(gridDim.x) * blockDim.x) {
    const int64_t cell = at / values;
    const T scale = grad_terms[yolo::kTerms * (cell / cells_per_image) + yolo::term_of(at % values, boxes, responsible[cell])];
    out[at] = static_cast<scalar_t>(static_cast<T>(grad[at]) * scale);
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t>
void launch_forward(const at::Tensor& p, const at::Tensor& t, const at::Tensor& c, const yolo::Params<double>& q,
                    at::Tensor& terms, scalar_t* grad, at::Tensor& responsible) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = p.size(0);
  yolo_v1_forward_kernel<scalar_t><<<grid_stride_blocks(n, 1), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      p.const_data_ptr<scalar_t>(), t.const_data_ptr<T>(), c.const_data_ptr<int64_t>(), n, t.size(1), params_as<T>(q),
      terms.mutable_data_ptr<T>(), grad, responsible.mutable_data_ptr<int8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward(const at::Tensor& gt, const at::Tensor& g, const at::Tensor& r, int64_t boxes, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kBackwardThreads = 256;
  const int64_t total = g.numel();
  yolo_v1_backward_kernel<scalar_t>
      <<<grid_stride_blocks(total, kBackwardThreads), kBackwardThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          gt.const_data_ptr<T>(), g.const_data_ptr<scalar_t>(), r.const_data_ptr<int8_t>(), total, g.size(3),
          g.size(1) * g.size(2), static_cast<int>(boxes), out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> yolo_v1_loss_cuda(const at::Tensor& pred, const at::Tensor& targets,
                                                                const at::Tensor& counts, int64_t num_boxes,
                                                                int64_t num_classes, double lambda_coord,
                                                                double lambda_noobj, c10::string_view wh,
                                                                c10::string_view conf_target, bool compute_grad) {
  const yolo::Params<double> q = check_yolo_v1_args(pred, targets, counts, num_boxes, num_classes, lambda_coord,
                                                    lambda_noobj, wh, conf_target);
  const c10::cuda::CUDAGuard guard(pred.device());
  const auto acc = accumulate_type(pred.scalar_type());
  const int64_t n = pred.size(0);
  auto terms = at::zeros({n, yolo::kTerms}, pred.options().dtype(acc));
  auto grad = compute_grad ? at::empty(pred.sizes(), pred.options()) : at::empty({0}, pred.options());
  auto responsible = at::empty({n, pred.size(1), pred.size(2)}, pred.options().dtype(at::kChar));
  if (pred.numel() == 0) return {terms, grad, responsible};
  const at::Tensor p = pred.contiguous(), c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  FASTMTL_DISPATCH_BOXES(p.scalar_type(), "yolo_v1_loss_cuda", [&] {
    launch_forward<scalar_t>(p, t, c, q, terms, compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr,
                             responsible);
  });
  return {terms, grad, responsible};
}

at::Tensor yolo_v1_loss_backward_cuda(const at::Tensor& grad_terms, const at::Tensor& grad,
                                      const at::Tensor& responsible, int64_t num_boxes) {
  check_yolo_v1_grad(grad_terms, grad, responsible, num_boxes);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto out = at::empty(grad.sizes(), grad.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.contiguous(), gt = grad_terms.contiguous(), r = responsible.contiguous();
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "yolo_v1_loss_backward_cuda",
                         [&] { launch_backward<scalar_t>(gt, g, r, num_boxes, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("yolo_v1_loss", &yolo_v1_loss_cuda);
  m.impl("_yolo_v1_loss_backward", &yolo_v1_loss_backward_cuda);
}

}  // namespace fastmtl
