// CUDA kernels of the fused anchor-based YOLO loss. Forward: blocks stride over (image, scale)
// items; a block first assigns the image's targets (scale, anchor, cell) into shared memory, then
// its threads stride over the item's predictions, each computing its terms and gradient from the
// shared header; the terms are reduced per item with cub and added over the scales by ATen (fixed
// orders: deterministic, no atomics). Counts outside [0, max_boxes] are clamped (the CPU kernel
// rejects them; reading them here would sync). Backward: one grid-stride pass per scale.
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
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "yolo_v3.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxTargets = 2048;  // per image: their cells live in 32 KiB of shared memory

template <typename scalar_t>
struct DeviceViews {
  const scalar_t* pred[yolo3::kMaxLevels];
  scalar_t* grad[yolo3::kMaxLevels];  // null: no gradient
  int8_t* assigned[yolo3::kMaxLevels];
  int values;
};

template <typename scalar_t>
__global__ void yolo_v3_forward_kernel(DeviceViews<scalar_t> v, yolo3::Scales<at::opmath_type<scalar_t>> s,
                                       const at::opmath_type<scalar_t>* __restrict__ targets,
                                       const int64_t* __restrict__ counts, int64_t n, int64_t max_boxes,
                                       at::opmath_type<scalar_t> thr, at::opmath_type<scalar_t>* __restrict__ partial) {
  using T = at::opmath_type<scalar_t>;
  using BlockSum = cub::BlockReduce<T, kThreads>;
  __shared__ typename BlockSum::TempStorage storage;
  extern __shared__ yolo3::GtCell cells[];
  for (int64_t item = blockIdx.x; item < n * s.levels; item += gridDim.x) {
    const int64_t img = item / s.levels;
    const int l = static_cast<int>(item % s.levels);
    const T* t = targets + 5 * img * max_boxes;
    const int64_t raw = counts[img];
    const int64_t count = raw < 0 ? 0 : (raw > max_boxes ? max_boxes : raw);
    for (int64_t k = threadIdx.x; k < count; k += blockDim.x) cells[k] = yolo3::assign(t + 5 * k, s);
    __syncthreads();
    const int64_t h = s.grid_h[l], w = s.grid_w[l], slots = int64_t(s.anchors) * h * w;
    T sums[yolo3::kTerms] = {};
    for (int64_t slot = threadIdx.x; slot < slots; slot += blockDim.x) {
      const int i = static_cast<int>(slot % w), j = static_cast<int>(slot / w % h), a = static_cast<int>(slot / (w * h));
      const int64_t at = img * slots + slot;
      const scalar_t* p = v.pred[l] + at * v.values;
      const yolo3::Slot<T> q = yolo3::slot_of(s, l, a, j, i);
      const int64_t k = yolo3::slot_owner(cells, count, l, a, i, j);
      const bool skip = k < 0 && yolo3::ignored(p, q, t, count, thr);
      const bool assigned = yolo3::prediction_loss(p, v.values - 5, q, k >= 0 ? t + 5 * k : nullptr, skip, sums,
                                                   v.grad[l] ? v.grad[l] + at * v.values : nullptr);
      v.assigned[l][at] = assigned ? 1 : 0;
    }
    for (int term = 0; term < yolo3::kTerms; ++term) {
      const T total = BlockSum(storage).Sum(sums[term]);  // valid in thread 0
      if (threadIdx.x == 0) partial[yolo3::kTerms * item + term] = total;
      __syncthreads();  // the storage (and, after the last term, the cells) are reused
    }
  }
}

template <typename scalar_t>
__global__ void yolo_v3_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_terms,
                                        const scalar_t* __restrict__ grad, const int8_t* __restrict__ assigned,
                                        int64_t total, int64_t values, int64_t slots_per_image,
                                        scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t at = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; at < total; at += int64_t(gridDim.x) * blockDim.x) {
    const int64_t slot = at / values;
    const T scale = grad_terms[yolo3::kTerms * (slot / slots_per_image) + yolo3::term_of(at % values, assigned[slot] != 0)];
    out[at] = static_cast<scalar_t>(static_cast<T>(grad[at]) * scale);
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t>
void launch_forward(const std::vector<at::Tensor>& p, std::vector<at::Tensor>& grads, std::vector<at::Tensor>& assigned,
                    const yolo3::Scales<double>& sd, const at::Tensor& anc, const at::Tensor& t, const at::Tensor& c,
                    double thr, at::Tensor& partial) {
  using T = at::opmath_type<scalar_t>;
  DeviceViews<scalar_t> v{};
  v.values = static_cast<int>(p[0].size(4));
  for (size_t l = 0; l < p.size(); ++l) {
    v.pred[l] = p[l].const_data_ptr<scalar_t>();
    v.grad[l] = grads.empty() ? nullptr : grads[l].mutable_data_ptr<scalar_t>();
    v.assigned[l] = assigned[l].mutable_data_ptr<int8_t>();
  }
  const int64_t n = p[0].size(0), max_boxes = t.size(1);
  const size_t shared = static_cast<size_t>(max_boxes) * sizeof(yolo3::GtCell);
  yolo_v3_forward_kernel<scalar_t><<<grid_stride_blocks(n * sd.levels, 1), kThreads, shared,
                                     c10::cuda::getCurrentCUDAStream()>>>(
      v, scales_as<T>(sd, anc.const_data_ptr<T>()), t.const_data_ptr<T>(), c.const_data_ptr<int64_t>(), n, max_boxes,
      static_cast<T>(thr), partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward(const at::Tensor& gt, const at::Tensor& g, const at::Tensor& a, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = g.numel(), values = g.size(4), per_image = a.numel() / std::max<int64_t>(g.size(0), 1);
  yolo_v3_backward_kernel<scalar_t><<<grid_stride_blocks(total, kThreads), kThreads, 0,
                                      c10::cuda::getCurrentCUDAStream()>>>(
      gt.const_data_ptr<T>(), g.const_data_ptr<scalar_t>(), a.const_data_ptr<int8_t>(), total, values, per_image,
      out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> yolo_v3_loss_cuda(
    at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
    at::ArrayRef<double> strides, double ignore_threshold, bool compute_grad) {
  const yolo3::Scales<double> sd = check_yolo_v3_args(preds, targets, counts, anchors, strides, ignore_threshold);
  TORCH_CHECK_VALUE(targets.size(1) <= kMaxTargets, "targets: at most ", kMaxTargets,
                    " rows per image on CUDA, got ", targets.size(1));
  const c10::cuda::CUDAGuard guard(preds[0].device());
  const auto acc = accumulate_type(preds[0].scalar_type());
  const int64_t n = preds[0].size(0), levels = sd.levels;
  std::vector<at::Tensor> p(levels), grads, assigned(levels);
  for (int64_t l = 0; l < levels; ++l) {
    p[l] = preds[l].contiguous();
    if (compute_grad) grads.push_back(at::empty(preds[l].sizes(), preds[l].options()));
    assigned[l] = at::empty(preds[l].sizes().slice(0, 4), preds[l].options().dtype(at::kChar));
  }
  at::Tensor partial = at::zeros({n, levels, yolo3::kTerms}, preds[0].options().dtype(acc));
  if (n == 0) return {partial.sum(1), grads, assigned};
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  FASTMTL_DISPATCH_BOXES(p[0].scalar_type(), "yolo_v3_loss_cuda",
                         [&] { launch_forward<scalar_t>(p, grads, assigned, sd, anc, t, c, ignore_threshold, partial); });
  return {partial.sum(1), grads, assigned};
}

std::vector<at::Tensor> yolo_v3_loss_backward_cuda(const at::Tensor& grad_terms, at::TensorList grads,
                                                   at::TensorList assigned) {
  check_yolo_v3_grad(grad_terms, grads, assigned);
  const c10::cuda::CUDAGuard guard(grad_terms.device());
  const at::Tensor gt = grad_terms.contiguous();
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < grads.size(); ++l) {
    const at::Tensor g = grads[l].contiguous(), a = assigned[l].contiguous();
    at::Tensor o = at::empty(g.sizes(), g.options());
    if (o.numel() > 0) FASTMTL_DISPATCH_BOXES(g.scalar_type(), "yolo_v3_loss_backward_cuda", [&] { launch_backward<scalar_t>(gt, g, a, o); });
    out.push_back(o);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("yolo_v3_loss", &yolo_v3_loss_cuda);
  m.impl("_yolo_v3_loss_backward", &yolo_v3_loss_backward_cuda);
}

}  // namespace fastmtl
