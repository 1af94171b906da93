#pragma once
// Shared declarations of non-maximum suppression.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <limits>
#include <optional>
#include <tuple>

#include "../../kernels/nms.h"

namespace fastmtl {

// Checks boxes [N, 4], scores [N] and idxs [N] (when given); messages name the argument.
void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold);

// torchvision's CPU kernel compares the IoU with a double threshold. For a float IoU x,
// x > d holds exactly when x > the largest float <= d, so CPU kernels compare in float (twice
// as many lanes) with the same results.
template <typename T>
T threshold_below(double d) {
  T t = static_cast<T>(d);
  if (static_cast<double>(t) > d) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// For a float x, x >= d holds exactly when x >= the smallest float >= d.
template <typename T>
T threshold_at_or_above(double d) {
  T t = static_cast<T>(d);
  if (static_cast<double>(t) < d) t = std::nextafter(t, std::numeric_limits<T>::infinity());
  return t;
}

// Checks of multiclass_nms: boxes [B, N, 4] or [B, N, C, 4], scores [B, N] or [B, N, C].
void check_multiclass_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                               double score_threshold, int64_t max_detections);

// Outputs of multiclass_nms: boxes, scores, classes, indices, counts.
using Detections = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Outputs of multiclass_nms filled with padding: boxes 0, scores 0, classes -1, indices -1, counts 0.
Detections empty_detections(const at::Tensor& boxes, const at::Tensor& scores,
                                         int64_t max_detections);

// The Soft-NMS decay named "linear" or "gaussian"; else an error starting "Invalid method".
nms::SoftMethod parse_soft_nms_method(c10::string_view method);

// Checks of soft_nms; returns the decay that `method` names.
nms::SoftMethod check_soft_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                    const std::optional<at::Tensor>& idxs, double iou_threshold, double sigma,
                                    double score_threshold, c10::string_view method);

}  // namespace fastmtl
