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
#include <ATen/ops/full.h>
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
#include "obj_grad.cuh"
#include "yolo_v3.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxTargets = 2048;  // per image: their cells live in 32 KiB of shared memory

template <typename scalar_t>
struct DeviceOut {
  scalar_t* grad[yolo3::kMaxLevels];
};

template <typename scalar_t>
struct DeviceViews {
  const scalar_t* pred[yolo3::kMaxLevels];
  scalar_t* obj_grad[yolo3::kMaxLevels];  // null: no gradient
  int8_t* assigned[yolo3::kMaxLevels];
  scalar_t* rows;      // [N, M, values] or null
  int64_t* row_slots;  // [N, M, 2]
  int values;
};

template <typename scalar_t>
__global__ void yolo_v3_forward_kernel(DeviceViews<scalar_t> v, yolo3::Scales<at::opmath_type<scalar_t>> s,
                                       const at::opmath_type<scalar_t>* __restrict__ targets,
                                       const int64_t* __restrict__ counts, int64_t n, int64_t max_boxes,
                                       at::opmath_type<scalar_t> thr, bool ciou,
                                       at::opmath_type<scalar_t>* __restrict__ partial) {
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
      const int64_t row = img * max_boxes + k;  // target k's row, when k >= 0
      const bool grad = v.obj_grad[l] != nullptr;
      yolo3::prediction_loss(p, v.values - 5, q, k >= 0 ? t + 5 * k : nullptr, skip, ciou, sums,
                             grad ? v.obj_grad[l] + at : nullptr, grad && k >= 0 ? v.rows + row * v.values : nullptr);
      v.assigned[l][at] = k >= 0 ? 1 : 0;
      if (k >= 0) {  // one prediction per target: no other thread writes this row
        v.row_slots[2 * row] = l;
        v.row_slots[2 * row + 1] = at;
      }
    }
    for (int term = 0; term < yolo3::kTerms; ++term) {
      const T total = BlockSum(storage).Sum(sums[term]);  // valid in thread 0
      if (threadIdx.x == 0) partial[yolo3::kTerms * item + term] = total;
      __syncthreads();  // the storage (and, after the last term, the cells) are reused
    }
  }
}

// The objectness gradient's scale: the obj term's for an assigned prediction, noobj's otherwise.
template <typename T>
struct V3ObjScale {
  const T* grad_terms;  // [N, 4]
  const int8_t* assigned;
  int64_t per_image;
  __device__ T operator()(int64_t prediction) const {
    return grad_terms[yolo3::kTerms * (prediction / per_image) + (assigned[prediction] ? yolo3::kObj : yolo3::kNoObj)];
  }
};

// The other values of the assigned predictions: thread e of a row's block strides over them.
template <typename scalar_t>
__global__ void yolo_v3_backward_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_terms,
                                             const scalar_t* __restrict__ rows, const int64_t* __restrict__ row_slots,
                                             int64_t total_rows, int64_t max_boxes, int64_t values, int levels,
                                             DeviceOut<scalar_t> out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t row = blockIdx.x; row < total_rows; row += gridDim.x) {
    const int64_t level = row_slots[2 * row];
    if (level < 0 || level >= levels) continue;
    const T* scale = grad_terms + yolo3::kTerms * (row / max_boxes);
    scalar_t* o = out.grad[level] + row_slots[2 * row + 1] * values;
    for (int64_t e = threadIdx.x; e < values; e += blockDim.x) {
      if (e == 4) continue;
      o[e] = static_cast<scalar_t>(static_cast<T>(rows[row * values + e]) * scale[e < 4 ? yolo3::kBox : yolo3::kCls]);
    }
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t>
void launch_forward(const std::vector<at::Tensor>& p, std::vector<at::Tensor>& obj_grads,
                    std::vector<at::Tensor>& assigned, at::Tensor& rows, at::Tensor& row_slots,
                    const yolo3::Scales<double>& sd, const at::Tensor& anc, const at::Tensor& t, const at::Tensor& c,
                    double thr, bool ciou, at::Tensor& partial) {
  using T = at::opmath_type<scalar_t>;
  DeviceViews<scalar_t> v{};
  v.values = static_cast<int>(p[0].size(4));
  v.rows = obj_grads.empty() ? nullptr : rows.mutable_data_ptr<scalar_t>();
  v.row_slots = row_slots.mutable_data_ptr<int64_t>();
  for (size_t l = 0; l < p.size(); ++l) {
    v.pred[l] = p[l].const_data_ptr<scalar_t>();
    v.obj_grad[l] = obj_grads.empty() ? nullptr : obj_grads[l].mutable_data_ptr<scalar_t>();
    v.assigned[l] = assigned[l].mutable_data_ptr<int8_t>();
  }
  const int64_t n = p[0].size(0), max_boxes = t.size(1);
  const size_t shared = static_cast<size_t>(max_boxes) * sizeof(yolo3::GtCell);
  yolo_v3_forward_kernel<scalar_t><<<grid_stride_blocks(n * sd.levels, 1), kThreads, shared,
                                     c10::cuda::getCurrentCUDAStream()>>>(
      v, scales_as<T>(sd, anc.const_data_ptr<T>()), t.const_data_ptr<T>(), c.const_data_ptr<int64_t>(), n, max_boxes,
      static_cast<T>(thr), ciou, partial.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward(const at::Tensor& gt, const std::vector<at::Tensor>& obj, const std::vector<at::Tensor>& assigned,
                     const at::Tensor& rows, const at::Tensor& row_slots, std::vector<at::Tensor>& out) {
  using T = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t values = rows.size(2), n = rows.size(0);
  DeviceOut<scalar_t> dst{};
  for (size_t l = 0; l < obj.size(); ++l) {
    dst.grad[l] = out[l].mutable_data_ptr<scalar_t>();
    const int64_t slots = obj[l].numel();
    if (slots == 0) continue;
    const V3ObjScale<T> scale{gt.const_data_ptr<T>(), assigned[l].const_data_ptr<int8_t>(), slots / n};
    obj_grad_kernel<scalar_t><<<grid_stride_blocks(slots * values, kThreads), kThreads, 0, stream>>>(
        obj[l].const_data_ptr<scalar_t>(), slots * values, values, scale, dst.grad[l]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const int64_t total_rows = n * rows.size(1);
  if (total_rows == 0) return;
  yolo_v3_backward_rows_kernel<scalar_t><<<grid_stride_blocks(total_rows, 1), 128, 0, stream>>>(
      gt.const_data_ptr<T>(), rows.const_data_ptr<scalar_t>(), row_slots.const_data_ptr<int64_t>(), total_rows,
      rows.size(1), values, static_cast<int>(obj.size()), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

using Outputs = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>;

Outputs yolo_v3_loss_cuda(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                          const at::Tensor& anchors, at::ArrayRef<double> strides, double ignore_threshold,
                          bool compute_grad, bool ciou) {
  const yolo3::Scales<double> sd = check_yolo_v3_args(preds, targets, counts, anchors, strides, ignore_threshold);
  TORCH_CHECK_VALUE(targets.size(1) <= kMaxTargets, "targets: at most ", kMaxTargets,
                    " rows per image on CUDA, got ", targets.size(1));
  const c10::cuda::CUDAGuard guard(preds[0].device());
  const auto acc = accumulate_type(preds[0].scalar_type());
  const int64_t n = preds[0].size(0), max_boxes = targets.size(1);
  YoloV3Buffers b = yolo_v3_buffers(preds, max_boxes, compute_grad);
  if (n == 0) return {b.partial.sum(1), b.obj_grads, b.assigned, b.rows, b.row_slots};
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  FASTMTL_DISPATCH_BOXES(b.preds[0].scalar_type(), "yolo_v3_loss_cuda", [&] {
    launch_forward<scalar_t>(b.preds, b.obj_grads, b.assigned, b.rows, b.row_slots, sd, anc, t, c, ignore_threshold,
                             ciou, b.partial);
  });
  return {b.partial.sum(1), b.obj_grads, b.assigned, b.rows, b.row_slots};
}

std::vector<at::Tensor> yolo_v3_loss_backward_cuda(const at::Tensor& grad_terms, at::TensorList obj_grads,
                                                   at::TensorList assigned, const at::Tensor& rows,
                                                   const at::Tensor& row_slots) {
  check_yolo_v3_grad(grad_terms, obj_grads, assigned, rows, row_slots);
  const c10::cuda::CUDAGuard guard(grad_terms.device());
  const at::Tensor gt = grad_terms.contiguous(), r = rows.contiguous(), rs = row_slots.contiguous();
  std::vector<at::Tensor> obj, as, out;
  for (size_t l = 0; l < obj_grads.size(); ++l) {
    obj.push_back(obj_grads[l].contiguous());
    as.push_back(assigned[l].contiguous());
    out.push_back(empty_prediction_grad(obj_grads[l], rows.size(2)));  // every value written by the kernels
  }
  if (rows.size(0) > 0)
    FASTMTL_DISPATCH_BOXES(r.scalar_type(), "yolo_v3_loss_backward_cuda",
                           [&] { launch_backward<scalar_t>(gt, obj, as, r, rs, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("yolo_v3_loss", &yolo_v3_loss_cuda);
  m.impl("_yolo_v3_loss_backward", &yolo_v3_loss_backward_cuda);
}

}  // namespace fastmtl
