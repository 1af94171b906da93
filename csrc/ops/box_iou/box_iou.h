#pragma once
// Shared declarations of the box IoU op family (pairwise N x M and aligned N pairs).
#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastmtl {

// Argument checks shared by the CPU and CUDA kernels; messages name the argument.
void check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2, int64_t variant,
                        double eps, bool aligned);
void check_box_iou_grad(const at::Tensor& grad, const at::Tensor& boxes1, const at::Tensor& boxes2,
                        bool aligned);

// dtype of the outputs: float32 for half and bfloat16 (as torchvision), else the input dtype.
at::ScalarType box_iou_accumulate_type(at::ScalarType t);

}  // namespace fastmtl
