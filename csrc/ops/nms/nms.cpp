// Schemas and argument checks of non-maximum suppression.
#include "nms.h"

#include <torch/library.h>

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <limits>

#include "../../kernels/nms.h"
#include "../checks.h"

namespace fastmtl {

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, "scores must have shape [N], got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), "boxes and scores must hold the same number of boxes, got ",
              boxes.size(0), " and ", scores.size(0));
  check_kernel_float(boxes, "boxes");
  check_kernel_float(scores, "scores");
  TORCH_CHECK(boxes.device() == scores.device(), "boxes and scores must be on the same device, got ",
              boxes.device(), " and ", scores.device());
  if (idxs != nullptr) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "idxs must have shape [", boxes.size(0),
                "], got ", idxs->sizes());
    TORCH_CHECK(idxs->scalar_type() == at::kLong, "idxs must be int64, got ", idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), "idxs must be on the device of boxes, got ", idxs->device(),
                " and ", boxes.device());
  }
  TORCH_CHECK(!std::isnan(iou_threshold), "iou_threshold must not be NaN");
}

void check_multiclass_nms_args(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                               double score_threshold, int64_t max_detections) {
  TORCH_CHECK(scores.dim() == 2 || scores.dim() == 3, "scores must have shape [B, N] or [B, N, C], got ",
              scores.sizes());
  const bool per_class = boxes.dim() == 4;
  TORCH_CHECK((boxes.dim() == 3 || per_class) && boxes.size(-1) == 4,
              "boxes must have shape [B, N, 4] or [B, N, C, 4], got ", boxes.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0) && boxes.size(1) == scores.size(1),
              "boxes and scores must agree on B and N, got ", boxes.sizes(), " and ", scores.sizes());
  TORCH_CHECK(!per_class || (scores.dim() == 3 && boxes.size(2) == scores.size(2)),
              "boxes of shape [B, N, C, 4] need scores of shape [B, N, C], got ", boxes.sizes(), " and ",
              scores.sizes());
  check_kernel_float(boxes, "boxes");
  check_kernel_float(scores, "scores");
  TORCH_CHECK(boxes.device() == scores.device(), "boxes and scores must be on the same device, got ",
              boxes.device(), " and ", scores.device());
  TORCH_CHECK(!std::isnan(iou_threshold), "iou_threshold must not be NaN");
  TORCH_CHECK(!std::isnan(score_threshold), "score_threshold must not be NaN");
  TORCH_CHECK(max_detections >= 0, "max_detections must be >= 0, got ", max_detections);
  // Slots are indexed with 32-bit ints in the kernels; the padded outputs are B x K.
  TORCH_CHECK_VALUE(max_detections <= std::numeric_limits<int32_t>::max(),
                    "max_detections must be at most 2^31 - 1, got ", max_detections);
}

nms::SoftMethod parse_soft_nms_method(c10::string_view method) {
  static constexpr Choice<nms::SoftMethod> kMethods[] = {{"linear", nms::kLinear}, {"gaussian", nms::kGaussian}};
  return parse_choice(method, "method", kMethods);
}

nms::SoftMethod check_soft_nms_args(const at::Tensor& boxes, const at::Tensor& scores,
                                    const std::optional<at::Tensor>& idxs, double iou_threshold, double sigma,
                                    double score_threshold, c10::string_view method) {
  check_nms_args(boxes, scores, idxs ? &*idxs : nullptr, iou_threshold);
  const nms::SoftMethod decay = parse_soft_nms_method(method);
  // In the boxes' compute type: a tiny double rounds to 0 in float32, and exp(-iou^2 / 0) is NaN.
  const bool wide = boxes.scalar_type() == at::kDouble;
  TORCH_CHECK_VALUE(wide ? sigma > 0 : static_cast<float>(sigma) > 0.0f, "sigma must be > 0 in ",
                    wide ? "float64" : "float32 (the compute type of these boxes)", ", got ", sigma);
  TORCH_CHECK(!std::isnan(score_threshold), "score_threshold must not be NaN");
  return decay;
}

Detections empty_detections(const at::Tensor& boxes, const at::Tensor& scores,
                                         int64_t max_detections) {
  const int64_t b = boxes.size(0), k = max_detections;
  const auto longs = boxes.options().dtype(at::kLong);
  try {
    return {at::zeros({b, k, 4}, boxes.options()), at::zeros({b, k}, scores.options()),
            at::full({b, k}, -1, longs), at::full({b, k}, -1, longs), at::zeros({b}, longs)};
  } catch (const c10::Error& e) {  // name the argument rather than the allocator
    TORCH_CHECK_VALUE(false, "max_detections = ", k, ": the padded outputs of ", b, " x ", k,
                      " detections do not fit in memory (", e.what_without_backtrace(), ")");
  }
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // Indices (int64) of the boxes kept by greedy NMS, in decreasing order of score (ties: lower
  // index first). batched_nms suppresses only within the same idxs value.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Class-aware NMS of many images at once with fixed-size outputs (boxes [B, K, 4], scores
  // [B, K], classes [B, K], indices [B, K], counts [B]; K = max_detections; padding 0 / -1).
  m.def(
      "multiclass_nms(Tensor boxes, Tensor scores, float iou_threshold, float score_threshold, "
      "int max_detections) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Soft-NMS: kept indices in selection order and their decayed scores. method: "linear" or "gaussian".
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, float sigma, "
      "float score_threshold, str method) -> (Tensor, Tensor)");
}
