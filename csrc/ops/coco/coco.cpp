// Schema and argument checks of COCO box evaluation (pycocotools' COCOeval, bbox).
#include "coco.h"

#include <torch/library.h>

#include <limits>

namespace fastmtl {
namespace {

void check_1d(const at::Tensor& t, const char* name, int64_t n, const char* n_from) {
  TORCH_CHECK_VALUE(t.dim() == 1 && t.size(0) == n, name, " must have shape [", n, "] like ", n_from, ", got ",
                    t.sizes());
}

void check_dtype(const at::Tensor& t, const char* name, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, name, " must be ", want, ", got ", t.scalar_type());
}

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device().is_meta(), name,
                    " must be a CPU tensor (COCO evaluation has a CPU kernel only), got ", t.device());
}

void check_boxes(const at::Tensor& boxes, const char* name) {
  TORCH_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, name, " must have shape [N, 4] (x, y, w, h), got ",
                    boxes.sizes());
  check_dtype(boxes, name, at::kDouble);
}

}  // namespace

void check_coco_evaluate_args(const at::Tensor& det_boxes, const at::Tensor& det_scores,
                              const at::Tensor& det_labels, const at::Tensor& det_images, const at::Tensor& gt_boxes,
                              const at::Tensor& gt_labels, const at::Tensor& gt_images, const at::Tensor& gt_iscrowd,
                              const at::Tensor& gt_areas, const at::Tensor& iou_thresholds,
                              const at::Tensor& recall_thresholds, const at::Tensor& area_ranges,
                              c10::IntArrayRef max_dets, int64_t num_images, int64_t num_classes) {
  check_boxes(det_boxes, "det_boxes");
  check_boxes(gt_boxes, "gt_boxes");
  const int64_t n = det_boxes.size(0), m = gt_boxes.size(0);
  check_1d(det_scores, "det_scores", n, "det_boxes");
  check_1d(det_labels, "det_labels", n, "det_boxes");
  check_1d(det_images, "det_images", n, "det_boxes");
  check_1d(gt_labels, "gt_labels", m, "gt_boxes");
  check_1d(gt_images, "gt_images", m, "gt_boxes");
  check_1d(gt_iscrowd, "gt_iscrowd", m, "gt_boxes");
  check_1d(gt_areas, "gt_areas", m, "gt_boxes");
  check_dtype(det_scores, "det_scores", at::kDouble);
  check_dtype(gt_areas, "gt_areas", at::kDouble);
  check_dtype(det_labels, "det_labels", at::kLong);
  check_dtype(det_images, "det_images", at::kLong);
  check_dtype(gt_labels, "gt_labels", at::kLong);
  check_dtype(gt_images, "gt_images", at::kLong);
  check_dtype(gt_iscrowd, "gt_iscrowd", at::kBool);
  TORCH_CHECK_VALUE(iou_thresholds.dim() == 1 && iou_thresholds.size(0) > 0,
                    "iou_thresholds must have shape [T] with T > 0, got ", iou_thresholds.sizes());
  TORCH_CHECK_VALUE(recall_thresholds.dim() == 1 && recall_thresholds.size(0) > 0,
                    "recall_thresholds must have shape [R] with R > 0, got ", recall_thresholds.sizes());
  TORCH_CHECK_VALUE(area_ranges.dim() == 2 && area_ranges.size(1) == 2 && area_ranges.size(0) > 0,
                    "area_ranges must have shape [A, 2] with A > 0, got ", area_ranges.sizes());
  check_dtype(iou_thresholds, "iou_thresholds", at::kDouble);
  check_dtype(recall_thresholds, "recall_thresholds", at::kDouble);
  check_dtype(area_ranges, "area_ranges", at::kDouble);
  const at::Tensor* all[] = {&det_boxes, &det_scores, &det_labels, &det_images, &gt_boxes, &gt_labels,
                             &gt_images, &gt_iscrowd, &gt_areas, &iou_thresholds, &recall_thresholds, &area_ranges};
  const char* names[] = {"det_boxes", "det_scores", "det_labels", "det_images", "gt_boxes", "gt_labels",
                         "gt_images", "gt_iscrowd", "gt_areas", "iou_thresholds", "recall_thresholds",
                         "area_ranges"};
  for (size_t i = 0; i < std::size(all); ++i) check_cpu(*all[i], names[i]);
  TORCH_CHECK_VALUE(!max_dets.empty(), "max_dets must not be empty");
  for (size_t i = 0; i < max_dets.size(); ++i) {
    TORCH_CHECK_VALUE(max_dets[i] > 0, "max_dets must be positive, got ", max_dets);
    TORCH_CHECK_VALUE(i == 0 || max_dets[i] >= max_dets[i - 1], "max_dets must be non-decreasing, got ", max_dets);
  }
  TORCH_CHECK_VALUE(num_images >= 0, "num_images must be >= 0, got ", num_images);
  TORCH_CHECK_VALUE(num_classes >= 0, "num_classes must be >= 0, got ", num_classes);
  // (class, image) keys are class * num_images + image in 64 bits.
  TORCH_CHECK_VALUE(num_images == 0 || num_classes <= std::numeric_limits<int64_t>::max() / num_images,
                    "num_images * num_classes must fit in 64 bits, got ", num_images, " and ", num_classes);
  // The precision output is [T, R, K, A, M] float64: at most 2^31 elements (16 GiB).
  const double cells = double(iou_thresholds.size(0)) * double(recall_thresholds.size(0)) * double(num_classes) *
                       double(area_ranges.size(0)) * double(max_dets.size());
  TORCH_CHECK_VALUE(cells <= double(int64_t(1) << 31), "num_classes = ", num_classes,
                    ": the precision array of iou_thresholds x recall_thresholds x num_classes x area_ranges x "
                    "max_dets = ", cells, " elements is past 2^31");
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // COCO box evaluation with pycocotools' rules over packed per-detection / per-ground-truth
  // rows (boxes xywh float64; labels in [0, num_classes), images in [0, num_images)). Returns
  // precision [T, R, K, A, M] and recall [T, K, A, M], float64, -1 where a class has no ground
  // truth in that area range: COCOeval's eval["precision"] and eval["recall"].
  m.def(
      "coco_evaluate(Tensor det_boxes, Tensor det_scores, Tensor det_labels, Tensor det_images, "
      "Tensor gt_boxes, Tensor gt_labels, Tensor gt_images, Tensor gt_iscrowd, Tensor gt_areas, "
      "Tensor iou_thresholds, Tensor recall_thresholds, Tensor area_ranges, int[] max_dets, "
      "int num_images, int num_classes) -> (Tensor, Tensor)");
}
