#pragma once
// Shared declarations of the fused yolov5-mode anchor loss (math in csrc/kernels/yolo_v5.h).
#include <ATen/core/Tensor.h>

#include <vector>

#include "../../kernels/yolo_v5.h"
#include "yolo_v3.h"

namespace fastmtl {

// check_yolo_v3_args (the same inputs) and anchor_t > 0; returns the scales' shapes.
yolo3::Scales<double> check_yolov5_args(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                                        const at::Tensor& anchors, at::ArrayRef<double> strides, double anchor_t);

// The forward's inputs made contiguous and its outputs and scratch allocated (every value is
// written by the kernels): preds (contiguous), obj_grads [N, A, H, W] per scale (none without
// compute_grad), rows [N, L, S, 5 + C] (S = 5 A M slots; [0] without compute_grad), row_slots
// [N, L, S], sums [N, L, 3], candidates [N, L]; scratch: winner (int32, one per prediction of
// every scale, scale l from winner_offset[l]) and tobj [N, L, S].
struct YoloV5Buffers {
  std::vector<at::Tensor> preds, obj_grads;
  at::Tensor rows, row_slots, sums, candidates, winner, tobj;
  std::vector<int64_t> winner_offset;
};
YoloV5Buffers yolov5_buffers(at::TensorList preds, int64_t max_boxes, bool compute_grad);

// Checks the backward's saved tensors against the incoming gradient of the sums [N, L, 3].
void check_yolov5_grad(const at::Tensor& grad_sums, at::TensorList obj_grads, const at::Tensor& rows,
                       const at::Tensor& row_slots);

}  // namespace fastmtl
