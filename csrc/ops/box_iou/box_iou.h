#pragma once
// Shared declarations of the box IoU op family (pairwise N x M and aligned N pairs).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <tuple>

#include "../../kernels/box_math.h"

namespace fastmtl {

// The variant named by the schemas' `kind`: "iou", "giou", "diou" or "ciou"; else an error
// starting "Invalid kind".
box::Variant parse_box_iou_kind(c10::string_view kind);

// Argument checks shared by the CPU and CUDA kernels; messages name the argument. Returns the
// variant that `kind` names.
box::Variant check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                                double eps, bool aligned);
void check_box_iou_grad(const at::Tensor& grad, const at::Tensor& boxes1, const at::Tensor& boxes2,
                        bool aligned);

}  // namespace fastmtl
