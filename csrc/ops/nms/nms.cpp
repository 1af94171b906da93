// Schemas and argument checks of non-maximum suppression.
#include "nms.h"

#include <torch/library.h>

#include <cmath>

namespace fastmtl {

static bool is_box_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_nms_args(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                    double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "boxes must have shape [N, 4], got ", boxes.sizes());
  TORCH_CHECK(scores.dim() == 1, "scores must have shape [N], got ", scores.sizes());
  TORCH_CHECK(boxes.size(0) == scores.size(0), "boxes and scores must hold the same number of boxes, got ",
              boxes.size(0), " and ", scores.size(0));
  TORCH_CHECK(is_box_float(boxes.scalar_type()), "boxes must be float32, float64, float16 or bfloat16, got ",
              boxes.scalar_type());
  TORCH_CHECK(is_box_float(scores.scalar_type()), "scores must be float32, float64, float16 or bfloat16, got ",
              scores.scalar_type());
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

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // Indices (int64) of the boxes kept by greedy NMS, in decreasing order of score (ties: lower
  // index first). batched_nms suppresses only within the same idxs value.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
