#pragma once
// Shared declarations of COCO evaluation.
#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace fastmtl {

// Checks the arguments of coco_evaluate (shapes, dtypes, devices, sizes); every message names
// the argument. Values (NaN, label and image indices in range) are checked by the kernel.
void check_coco_evaluate_args(const at::Tensor& det_boxes, const at::Tensor& det_scores,
                              const at::Tensor& det_labels, const at::Tensor& det_images, const at::Tensor& gt_boxes,
                              const at::Tensor& gt_labels, const at::Tensor& gt_images, const at::Tensor& gt_iscrowd,
                              const at::Tensor& gt_areas, const at::Tensor& iou_thresholds,
                              const at::Tensor& recall_thresholds, const at::Tensor& area_ranges,
                              c10::IntArrayRef max_dets, int64_t num_images, int64_t num_classes);

}  // namespace fastmtl
