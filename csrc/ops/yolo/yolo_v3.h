#pragma once
// Shared declarations of the fused anchor-based YOLO loss (math in csrc/kernels/yolo_v3.h).
#include <ATen/core/Tensor.h>

#include <vector>

#include "../../kernels/yolo_v3.h"

namespace fastmtl {

// Checks preds (one [N, A, H_l, W_l, 5 + C] per scale, one dtype and device), targets [N, M, 5],
// counts [N], anchors [L, A, 2], strides [L] and the threshold; messages name the argument.
// Returns the scales' shapes (anchor_px left null).
yolo3::Scales<double> check_yolo_v3_args(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                                         const at::Tensor& anchors, at::ArrayRef<double> strides,
                                         double ignore_threshold);

// Checks the values of targets [N, M, 5] and anchors (one floating dtype, contiguous, on the CPU)
// and counts (int64): counts in [0, M], real rows finite with an integer class in [0, classes)
// and sizes > 0 (sizes_positive: v3's log) or >= 0, anchors finite and > 0.
void check_yolo_values_cpu(const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
                           int classes, bool sizes_positive);

// The forward's inputs made contiguous and its outputs allocated, shared by the CPU and CUDA
// kernels: preds (contiguous), obj_grads and assigned ([N, A, H, W] per scale; no obj_grads
// without compute_grad), rows [N, M, 5 + C] (zeros: rows no prediction reaches are defined too),
// row_slots [N, M, 2] (-1), partial [N, L, 4] per-scale terms (zeros).
struct YoloV3Buffers {
  std::vector<at::Tensor> preds, obj_grads, assigned;
  at::Tensor rows, row_slots, partial;
};
YoloV3Buffers yolo_v3_buffers(at::TensorList preds, int64_t max_boxes, bool compute_grad);

// An uninitialized gradient of one scale's predictions, [N, A, H, W, values], for obj_grad [N, A, H, W].
at::Tensor empty_prediction_grad(const at::Tensor& obj_grad, int64_t values);

// Checks the backward's saved tensors (the compact gradient) against the incoming gradient of the
// terms [N, 4].
void check_yolo_v3_grad(const at::Tensor& grad_terms, at::TensorList obj_grads, at::TensorList assigned,
                        const at::Tensor& rows, const at::Tensor& row_slots);

template <typename T>
yolo3::Scales<T> scales_as(const yolo3::Scales<double>& s, const T* anchor_px) {
  yolo3::Scales<T> out{s.levels, s.anchors, {}, {}, {}, anchor_px};
  for (int l = 0; l < s.levels; ++l) {
    out.grid_h[l] = s.grid_h[l];
    out.grid_w[l] = s.grid_w[l];
    out.stride[l] = static_cast<T>(s.stride[l]);
  }
  return out;
}

}  // namespace fastmtl
