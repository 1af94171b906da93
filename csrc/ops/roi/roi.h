#pragma once
// Shared declarations of RoI align and RoI pool.
#include <ATen/core/Tensor.h>

#include <optional>

namespace fastmtl {

// Checks input [N, C, H, W] and rois [K, 5] (same floating dtype and device), the output size
// and the scale; messages name the argument.
void check_roi_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width);

// Checks the incoming gradient [K, C, pooled_height, pooled_width] of a backward op against rois
// and the input sizes it is for.
void check_roi_grad(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width);

// An uninitialized output [K, C, pooled_height, pooled_width] of `dtype` (default: input's) for
// the rois; a size that does not fit in memory names output_size rather than the allocator.
at::Tensor empty_roi_output(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                            int64_t pooled_width, std::optional<at::ScalarType> dtype = std::nullopt);

// sampling_ratio of roi_align: at most roi::kMaxSamplingRatio samples per bin axis (<= 0: adaptive).
void check_sampling_ratio(int64_t sampling_ratio);

}  // namespace fastmtl
