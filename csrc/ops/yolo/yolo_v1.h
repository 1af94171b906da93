#pragma once
// Shared declarations of the fused YOLOv1 loss (math in csrc/kernels/yolo_v1.h).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "../../kernels/yolo_v1.h"

namespace fastmtl {

// Checks pred [N, H, W, 5B + C], targets [N, M, 5], counts [N] and the options (messages name
// the argument) and returns the kernel parameters.
yolo::Params<double> check_yolo_v1_args(const at::Tensor& pred, const at::Tensor& targets, const at::Tensor& counts,
                                        int64_t num_boxes, int64_t num_classes, double lambda_coord,
                                        double lambda_noobj, c10::string_view wh, c10::string_view conf_target);

// Checks the backward's saved tensors against the incoming gradient of the terms [N, 5].
void check_yolo_v1_grad(const at::Tensor& grad_terms, const at::Tensor& grad, const at::Tensor& responsible,
                        int64_t num_boxes);

// The kernels' parameters in their compute type.
template <typename T>
yolo::Params<T> params_as(const yolo::Params<double>& q) {
  return {q.grid_h, q.grid_w, q.boxes, q.classes, static_cast<T>(q.lambda_coord), static_cast<T>(q.lambda_noobj),
          q.wh, q.conf};
}

}  // namespace fastmtl
