// CUDA kernels of the fused yolov5-mode anchor loss. Forward: blocks stride over (image, scale)
// items; a block's threads stride first over the item's objectness values, then over its
// candidate slots (each slot's math from the shared header), and find each prediction's last
// candidate by an atomicMax of the slot numbers (order-free, so deterministic); the sums are
// reduced per item with cub (fixed order, no float atomics). Counts outside [0, max_boxes] are
// clamped (the CPU kernel rejects them; reading them here would sync). Backward: one grid-stride
// pass per scale, then one block per item adds the candidate rows in slot order (thread e owns
// value e: no two threads write one value).
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
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
#include "yolo_v5.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
struct DeviceOut {
  scalar_t* grad[yolo3::kMaxLevels];
};

template <typename scalar_t>
struct DeviceViews {
  const scalar_t* pred[yolo3::kMaxLevels];
  scalar_t* obj_grad[yolo3::kMaxLevels];  // null: no gradient
  int32_t* winner[yolo3::kMaxLevels];
  scalar_t* rows;      // [N, L, S, values] or null
  int64_t* row_slots;  // [N, L, S]
  at::opmath_type<scalar_t>* tobj;  // [N, L, S]
  int64_t max_boxes, slots;
  int values;
};

template <typename scalar_t>
__global__ void yolov5_forward_kernel(DeviceViews<scalar_t> v, yolo3::Scales<at::opmath_type<scalar_t>> s,
                                      const at::opmath_type<scalar_t>* __restrict__ targets,
                                      const int64_t* __restrict__ counts, int64_t n, at::opmath_type<scalar_t> anchor_t,
                                      at::opmath_type<scalar_t>* __restrict__ sums, int64_t* __restrict__ candidates) {
  using T = at::opmath_type<scalar_t>;
  using BlockSum = cub::BlockReduce<T, kThreads>;
  using BlockCount = cub::BlockReduce<int64_t, kThreads>;
  __shared__ union {
    typename BlockSum::TempStorage sum;
    typename BlockCount::TempStorage count;
  } storage;
  const int64_t values = v.values;
  for (int64_t item = blockIdx.x; item < n * s.levels; item += gridDim.x) {
    const int64_t img = item / s.levels;
    const int l = static_cast<int>(item % s.levels);
    const T* t = targets + 5 * img * v.max_boxes;
    const int64_t raw = counts[img];
    const int64_t count = raw < 0 ? 0 : (raw > v.max_boxes ? v.max_boxes : raw);
    const int64_t cells = int64_t(s.anchors) * s.grid_h[l] * s.grid_w[l];
    const scalar_t* p = v.pred[l] + img * cells * values;
    scalar_t* og = v.obj_grad[l] ? v.obj_grad[l] + img * cells : nullptr;
    int32_t* win = v.winner[l] + img * cells;
    int64_t* rs = v.row_slots + item * v.slots;
    T* tobj = v.tobj + item * v.slots;
    T part[yolo5::kTerms] = {};
    int64_t found = 0;
    for (int64_t at = threadIdx.x; at < cells; at += blockDim.x) {
      T sig;
      part[yolo5::kObj] += yolo5::softplus_sigmoid(static_cast<T>(p[at * values + 4]), &sig);
      if (og) og[at] = static_cast<scalar_t>(sig);
    }
    for (int64_t q = threadIdx.x; q < v.slots; q += blockDim.x) {  // reset the cells the candidates reach
      int64_t at;
      T pw, ph;
      if (yolo5::slot_candidate(t, count, v.max_boxes, q, s, l, anchor_t, &at, &pw, &ph).active) win[at] = -1;
    }
    __syncthreads();
    for (int64_t q = threadIdx.x; q < v.slots; q += blockDim.x) {
      scalar_t* row = og ? v.rows + (item * v.slots + q) * values : nullptr;
      const yolo5::SlotLoss<T> r = yolo5::slot_loss(p, t, count, v.max_boxes, q, s, l, v.values - 5, anchor_t, row);
      rs[q] = r.active ? img * cells + r.at : -1;
      tobj[q] = r.tobj;
      if (!r.active) continue;
      atomicMax(win + r.at, static_cast<int32_t>(q));
      part[yolo5::kBox] += r.box;
      part[yolo5::kCls] += r.cls;
      ++found;
    }
    __syncthreads();
    for (int64_t q = threadIdx.x; q < v.slots; q += blockDim.x) {  // each prediction's last candidate
      if (rs[q] < 0) continue;
      const int64_t at = rs[q] - img * cells;
      if (win[at] != q) continue;
      part[yolo5::kObj] -= tobj[q] * static_cast<T>(p[at * values + 4]);
      if (og) og[at] = static_cast<scalar_t>(static_cast<T>(og[at]) - tobj[q]);
    }
    for (int term = 0; term < yolo5::kTerms; ++term) {
      const T total = BlockSum(storage.sum).Sum(part[term]);  // valid in thread 0
      if (threadIdx.x == 0) sums[yolo5::kTerms * item + term] = total;
      __syncthreads();  // the storage is reused
    }
    const int64_t total = BlockCount(storage.count).Sum(found);
    if (threadIdx.x == 0) candidates[item] = total;
    __syncthreads();  // the storage, and this item's cells, are reused
  }
}

// The objectness gradient's scale: the incoming gradient of its (image, scale) objectness sum.
template <typename T>
struct V5ObjScale {
  const T* grad_sums;  // [N, L, 3]
  int64_t per_image;
  int levels, level;
  __device__ T operator()(int64_t prediction) const {
    return grad_sums[yolo5::kTerms * (prediction / per_image * levels + level) + yolo5::kObj];
  }
};

// The candidates' box and class values: a block per item, thread e adds value e of its rows in
// slot order.
template <typename scalar_t>
__global__ void yolov5_backward_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_sums,
                                            const scalar_t* __restrict__ rows, const int64_t* __restrict__ row_slots,
                                            int64_t items, int64_t slots, int64_t values, int levels,
                                            DeviceOut<scalar_t> out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const T* scale = grad_sums + yolo5::kTerms * item;
    scalar_t* dst = out.grad[item % levels];
    for (int64_t e = threadIdx.x; e < values; e += blockDim.x) {
      if (e == 4) continue;
      const T g = scale[e < 4 ? yolo5::kBox : yolo5::kCls];
      for (int64_t q = item * slots; q < (item + 1) * slots; ++q) {
        const int64_t at = row_slots[q];
        if (at < 0) continue;
        scalar_t* o = dst + at * values + e;
        *o = static_cast<scalar_t>(static_cast<T>(*o) + static_cast<T>(rows[q * values + e]) * g);
      }
    }
  }
}

// Launchers are templates so that no <<<>>> sits inside an AT_DISPATCH lambda.
template <typename scalar_t>
void launch_forward(YoloV5Buffers& b, const yolo3::Scales<double>& sd, const at::Tensor& anc, const at::Tensor& t,
                    const at::Tensor& c, double anchor_t) {
  using T = at::opmath_type<scalar_t>;
  const bool grad = !b.obj_grads.empty();
  const int64_t n = b.preds[0].size(0), max_boxes = t.size(1);
  DeviceViews<scalar_t> v{};
  v.values = static_cast<int>(b.preds[0].size(4));
  v.rows = grad ? b.rows.mutable_data_ptr<scalar_t>() : nullptr;
  v.row_slots = b.row_slots.mutable_data_ptr<int64_t>();
  v.tobj = b.tobj.mutable_data_ptr<T>();
  v.max_boxes = max_boxes;
  v.slots = yolo5::slots(sd.anchors, max_boxes);
  for (size_t l = 0; l < b.preds.size(); ++l) {
    v.pred[l] = b.preds[l].const_data_ptr<scalar_t>();
    v.obj_grad[l] = grad ? b.obj_grads[l].mutable_data_ptr<scalar_t>() : nullptr;
    v.winner[l] = b.winner.mutable_data_ptr<int32_t>() + b.winner_offset[l];
  }
  yolov5_forward_kernel<scalar_t><<<grid_stride_blocks(n * sd.levels, 1), kThreads, 0,
                                    c10::cuda::getCurrentCUDAStream()>>>(
      v, scales_as<T>(sd, anc.const_data_ptr<T>()), t.const_data_ptr<T>(), c.const_data_ptr<int64_t>(), n,
      static_cast<T>(anchor_t), b.sums.mutable_data_ptr<T>(), b.candidates.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward(const at::Tensor& gs, const std::vector<at::Tensor>& obj, const at::Tensor& rows,
                     const at::Tensor& row_slots, std::vector<at::Tensor>& out) {
  using T = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t n = rows.size(0), levels = rows.size(1), slots = rows.size(2), values = rows.size(3);
  DeviceOut<scalar_t> dst{};
  for (int64_t l = 0; l < levels; ++l) {
    dst.grad[l] = out[l].mutable_data_ptr<scalar_t>();
    const int64_t cells = obj[l].numel();
    if (cells == 0) continue;
    const V5ObjScale<T> scale{gs.const_data_ptr<T>(), cells / n, static_cast<int>(levels), static_cast<int>(l)};
    obj_grad_kernel<scalar_t><<<grid_stride_blocks(cells * values, kThreads), kThreads, 0, stream>>>(
        obj[l].const_data_ptr<scalar_t>(), cells * values, values, scale, dst.grad[l]);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (slots == 0) return;
  yolov5_backward_rows_kernel<scalar_t><<<grid_stride_blocks(n * levels, 1), 128, 0, stream>>>(
      gs.const_data_ptr<T>(), rows.const_data_ptr<scalar_t>(), row_slots.const_data_ptr<int64_t>(), n * levels, slots,
      values, static_cast<int>(levels), dst);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

using Outputs = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor>;

Outputs yolov5_loss_cuda(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                         const at::Tensor& anchors, at::ArrayRef<double> strides, double anchor_t, bool compute_grad) {
  const yolo3::Scales<double> sd = check_yolov5_args(preds, targets, counts, anchors, strides, anchor_t);
  const c10::cuda::CUDAGuard guard(preds[0].device());
  const auto acc = accumulate_type(preds[0].scalar_type());
  YoloV5Buffers b = yolov5_buffers(preds, targets.size(1), compute_grad);
  if (preds[0].size(0) == 0) return {b.sums, b.candidates, b.obj_grads, b.rows, b.row_slots};
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  FASTMTL_DISPATCH_BOXES(b.preds[0].scalar_type(), "yolov5_loss_cuda",
                         [&] { launch_forward<scalar_t>(b, sd, anc, t, c, anchor_t); });
  return {b.sums, b.candidates, b.obj_grads, b.rows, b.row_slots};
}

std::vector<at::Tensor> yolov5_loss_backward_cuda(const at::Tensor& grad_sums, at::TensorList obj_grads,
                                                  const at::Tensor& rows, const at::Tensor& row_slots) {
  check_yolov5_grad(grad_sums, obj_grads, rows, row_slots);
  const c10::cuda::CUDAGuard guard(grad_sums.device());
  const at::Tensor gs = grad_sums.contiguous(), r = rows.contiguous(), rs = row_slots.contiguous();
  std::vector<at::Tensor> obj, out;
  for (const at::Tensor& g : obj_grads) {
    obj.push_back(g.contiguous());
    out.push_back(empty_prediction_grad(g, rows.size(3)));  // every value written by the kernels
  }
  if (rows.size(0) > 0)
    FASTMTL_DISPATCH_BOXES(r.scalar_type(), "yolov5_loss_backward_cuda",
                           [&] { launch_backward<scalar_t>(gs, obj, r, rs, out); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("yolov5_loss", &yolov5_loss_cuda);
  m.impl("_yolov5_loss_backward", &yolov5_loss_backward_cuda);
}

}  // namespace fastmtl
