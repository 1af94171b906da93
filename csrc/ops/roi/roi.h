#pragma once
// Shared declarations of RoI align and RoI pool.
#include <ATen/core/Tensor.h>

namespace fastmtl {

// Checks input [N, C, H, W] and rois [K, 5] (same floating dtype and device), the output size
// and the scale; messages name the argument.
void check_roi_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width);

// Checks the incoming gradient [K, C, pooled_height, pooled_width] of a backward op against rois
// and the input sizes it is for.
void check_roi_grad(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width);

// sampling_ratio of roi_align: at most roi::kMaxSamplingRatio samples per bin axis (<= 0: adaptive).
void check_sampling_ratio(int64_t sampling_ratio);

}  // namespace fastmtl
