#pragma once
// Shared declarations of non-maximum suppression.
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastmtl {

// Checks boxes [N, 4], scores [N] and idxs [N] (when given); messages name the argument.
void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold);

}  // namespace fastmtl
