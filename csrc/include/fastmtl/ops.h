#pragma once
// fastmtl's ops for C++ callers: inline functions that call torch.ops.fastmtl.* through the
// dispatcher, so a call runs the kernel of its tensors' device (CPU or CUDA) and the op's
// autocast rule. The library that registers the ops must be loaded: link libfastmtl_ops (the
// CMake build, with -Wl,--no-as-needed) or dlopen it, or load fastmtl/_C*.so
// (torch.ops.load_library, or `import fastmtl` in an embedded interpreter).
//
// Autograd: the backward formulas are registered from Python (fastmtl/ops/*.py, with
// torch.library.register_autograd). They apply to these calls only in a process where Python
// has imported fastmtl (yolo_v1_loss's is C++: it differentiates without Python, once); see
// "C++ callers and autograd" in docs/adding-an-op.md.
//
// Arguments come in the order of the schemas (torch.ops.fastmtl.<op>, csrc/ops/*/<family>.cpp);
// shapes, dtypes and defaults are those of the Python functions of fastmtl.ops (see their
// docstrings). The kernels check every argument and throw c10::Error with a message naming it,
// e.g. "Invalid kind 'xiou': expected 'iou', 'giou', 'diou' or 'ciou'".
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/SymInt.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace fastmtl {
namespace ops {
namespace detail {

// The typed handle of fastmtl::<name>; the dispatcher checks Signature against the registered
// kernels' (c10::Error on a mismatch).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace detail

// IoU of every pair of boxes [N, 4] x [M, 4] (x1, y1, x2, y2) -> [N, M]; kind "iou", "giou",
// "diou" or "ciou"; eps is added to the squared diagonal of DIoU/CIoU (torchvision's pairwise ops).
inline at::Tensor pairwise_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2,
                                   c10::string_view kind = "iou", double eps = 1e-7) {
  static const auto op = detail::op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double)>(
      "fastmtl::pairwise_box_iou");
  return op.call(boxes1, boxes2, kind, eps);
}

// IoU of corresponding boxes [N, 4] x [N, 4] -> [N], eps in every denominator (the IoU losses).
inline at::Tensor aligned_box_iou(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind = "iou",
                                  double eps = 1e-7) {
  static const auto op = detail::op<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double)>(
      "fastmtl::aligned_box_iou");
  return op.call(boxes1, boxes2, kind, eps);
}

// Indices (int64) of the boxes kept by greedy NMS, by decreasing score.
inline at::Tensor nms(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  static const auto op =
      detail::op<at::Tensor(const at::Tensor&, const at::Tensor&, double)>("fastmtl::nms");
  return op.call(boxes, scores, iou_threshold);
}

// NMS within each value of idxs (int64 [N]).
inline at::Tensor batched_nms(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                              double iou_threshold) {
  static const auto op = detail::op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
      "fastmtl::batched_nms");
  return op.call(boxes, scores, idxs, iou_threshold);
}

// Class-aware NMS of a batch with padded outputs: (boxes [B, K, 4], scores [B, K], classes [B, K],
// indices [B, K], counts [B]), K = max_detections.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> multiclass_nms(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double score_threshold,
    int64_t max_detections) {
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(const at::Tensor&, const at::Tensor&, double, double, int64_t)>("fastmtl::multiclass_nms");
  return op.call(boxes, scores, iou_threshold, score_threshold, max_detections);
}

// Soft-NMS: (kept indices in selection order, their decayed scores); method "linear" or "gaussian".
inline std::tuple<at::Tensor, at::Tensor> soft_nms(const at::Tensor& boxes, const at::Tensor& scores,
                                                   const std::optional<at::Tensor>& idxs = std::nullopt,
                                                   double iou_threshold = 0.3, double sigma = 0.5,
                                                   double score_threshold = 0.001,
                                                   c10::string_view method = "linear") {
  using Out = std::tuple<at::Tensor, at::Tensor>;
  static const auto op = detail::op<Out(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                        double, double, double, c10::string_view)>("fastmtl::soft_nms");
  return op.call(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
}

// RoIAlign of input [N, C, H, W] over rois [K, 5] (batch index, x1, y1, x2, y2) -> [K, C, ph, pw].
inline at::Tensor roi_align(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                            int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio = -1,
                            bool aligned = false, bool deterministic = false) {
  static const auto op = detail::op<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymInt,
                                               c10::SymInt, int64_t, bool, bool)>("fastmtl::roi_align");
  return op.call(input, rois, spatial_scale, c10::SymInt(pooled_height), c10::SymInt(pooled_width), sampling_ratio,
                 aligned, deterministic);
}

// RoIPool: (output [K, C, ph, pw], argmax int32).
inline std::tuple<at::Tensor, at::Tensor> roi_pool(const at::Tensor& input, const at::Tensor& rois,
                                                   double spatial_scale, int64_t pooled_height,
                                                   int64_t pooled_width) {
  using Out = std::tuple<at::Tensor, at::Tensor>;
  static const auto op = detail::op<Out(const at::Tensor&, const at::Tensor&, double, c10::SymInt, c10::SymInt)>(
      "fastmtl::roi_pool");
  return op.call(input, rois, spatial_scale, c10::SymInt(pooled_height), c10::SymInt(pooled_width));
}

// Gram matrices of features [N, C, H, W] -> [N, C, C], divided by C * H * W when normalize.
inline at::Tensor gram_matrix(const at::Tensor& features, bool normalize = true) {
  static const auto op = detail::op<at::Tensor(const at::Tensor&, bool)>("fastmtl::gram_matrix");
  return op.call(features, normalize);
}

// Style loss per sample: (loss [N], diff [N, C, C]); normalization "gatys" or "mse".
inline std::tuple<at::Tensor, at::Tensor> style_loss(const at::Tensor& features, const at::Tensor& target_gram,
                                                     c10::string_view normalization = "gatys") {
  using Out = std::tuple<at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(const at::Tensor&, const at::Tensor&, c10::string_view)>("fastmtl::style_loss");
  return op.call(features, target_gram, normalization);
}

// COCO box evaluation (pycocotools' COCOeval rules, CPU only): detections and ground truths as
// rows, boxes (x, y, w, h) float64, labels in [0, num_classes) and images in [0, num_images)
// int64, gt_iscrowd bool -> (precision [T, R, K, A, M], recall [T, K, A, M]), float64, -1 where
// a class has no ground truth. fastmtl.metrics.coco_evaluate builds these rows and the stats.
inline std::tuple<at::Tensor, at::Tensor> coco_evaluate(
    const at::Tensor& det_boxes, const at::Tensor& det_scores, const at::Tensor& det_labels,
    const at::Tensor& det_images, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_images,
    const at::Tensor& gt_iscrowd, const at::Tensor& gt_areas, const at::Tensor& iou_thresholds,
    const at::Tensor& recall_thresholds, const at::Tensor& area_ranges, c10::IntArrayRef max_dets,
    int64_t num_images, int64_t num_classes) {
  using T = const at::Tensor&;
  using Out = std::tuple<at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(T, T, T, T, T, T, T, T, T, T, T, T, c10::IntArrayRef, int64_t, int64_t)>("fastmtl::coco_evaluate");
  return op.call(det_boxes, det_scores, det_labels, det_images, gt_boxes, gt_labels, gt_images, gt_iscrowd, gt_areas,
                 iou_thresholds, recall_thresholds, area_ranges, max_dets, num_images, num_classes);
}

// The YOLOv1 loss of pred [N, S, S, 5B + C] against targets [N, M, 5] (class, cx, cy, w, h image
// fractions; the first counts[n] real): (terms [N, 5] = coord, size, obj, noobj, class; the
// gradient of their sum, or empty; the responsible predictor per cell, int8). The rules are in
// fastmtl/ops/yolo_v1.py; wh "sqrt" or "signed_sqrt", conf_target "iou" or "one".
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> yolo_v1_loss(
    const at::Tensor& pred, const at::Tensor& targets, const at::Tensor& counts, int64_t num_boxes = 2,
    int64_t num_classes = 20, double lambda_coord = 5.0, double lambda_noobj = 0.5, c10::string_view wh = "sqrt",
    c10::string_view conf_target = "iou", bool compute_grad = false) {
  using T = const at::Tensor&;
  using Out = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(T, T, T, int64_t, int64_t, double, double, c10::string_view, c10::string_view, bool)>(
          "fastmtl::yolo_v1_loss");
  return op.call(pred, targets, counts, num_boxes, num_classes, lambda_coord, lambda_noobj, wh, conf_target,
                 compute_grad);
}

// The anchor-based YOLO loss, YOLOv3 rules with the "mse" box term (1 - CIoU with ciou), of preds
// (one [N, A, H, W, 5 + C] per scale) with anchors [L, A, 2] in pixels and strides [L]: (terms
// [N, 4] = box, obj, noobj, cls; then the compact gradient: objectness per prediction, assigned
// flags, the assigned rows and their slots). The rules are in
// fastmtl/ops/_yolo_anchor_reference.py (mode "v3").
inline std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor> yolo_v3_loss(
    at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
    at::ArrayRef<double> strides, double ignore_threshold = 0.5, bool compute_grad = false, bool ciou = false) {
  using T = const at::Tensor&;
  using Out = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(at::TensorList, T, T, T, at::ArrayRef<double>, double, bool, bool)>("fastmtl::yolo_v3_loss");
  return op.call(preds, targets, counts, anchors, strides, ignore_threshold, compute_grad, ciou);
}

// The anchor-based YOLO loss with yolov5's rules (mode "yolov5" of
// fastmtl/ops/_yolo_anchor_reference.py): (sums [N, L, 3] = box, obj, cls per image and scale,
// candidates [N, L]; then the compact gradient: objectness per prediction, candidate rows and
// their slots). yolov5's loss is sum_l box[l] / K_l + balance_l obj[l] / (N A H_l W_l) + cls[l] /
// (K_l C) over the batch (K_l: the scale's candidates), times the gains.
inline std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor> yolov5_loss(
    at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
    at::ArrayRef<double> strides, double anchor_t = 4.0, bool compute_grad = false) {
  using T = const at::Tensor&;
  using Out = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor>;
  static const auto op =
      detail::op<Out(at::TensorList, T, T, T, at::ArrayRef<double>, double, bool)>("fastmtl::yolov5_loss");
  return op.call(preds, targets, counts, anchors, strides, anchor_t, compute_grad);
}

}  // namespace ops
}  // namespace fastmtl
