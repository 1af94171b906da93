// Schemas and argument checks of the fused YOLOv1 loss.
#include "yolo_v1.h"

#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace fastmtl {

namespace {

constexpr int64_t kMaxBoxes = 127;          // the responsible predictor is saved as an int8
constexpr int64_t kMaxSide = int64_t(1) << 30;  // cells are ints

yolo::WhMode parse_wh(c10::string_view wh) {
  static constexpr Choice<yolo::WhMode> kModes[] = {{"sqrt", yolo::kSqrt}, {"signed_sqrt", yolo::kSignedSqrt}};
  return parse_choice(wh, "wh", kModes);
}

yolo::ConfTarget parse_conf_target(c10::string_view conf_target) {
  static constexpr Choice<yolo::ConfTarget> kTargets[] = {{"iou", yolo::kConfIoU}, {"one", yolo::kConfOne}};
  return parse_choice(conf_target, "conf_target", kTargets);
}

}  // namespace

yolo::Params<double> check_yolo_v1_args(const at::Tensor& pred, const at::Tensor& targets, const at::Tensor& counts,
                                        int64_t num_boxes, int64_t num_classes, double lambda_coord,
                                        double lambda_noobj, c10::string_view wh, c10::string_view conf_target) {
  TORCH_CHECK(pred.dim() == 4, "pred must have shape [N, S, S, 5 * num_boxes + num_classes], got ", pred.sizes());
  check_kernel_float(pred, "pred");
  TORCH_CHECK_VALUE(num_boxes >= 1 && num_boxes <= kMaxBoxes, "num_boxes must be in [1, ", kMaxBoxes, "], got ",
                    num_boxes);
  TORCH_CHECK_VALUE(num_classes >= 0 && num_classes < kMaxSide, "num_classes must be in [0, 2^30), got ",
                    num_classes);
  TORCH_CHECK(pred.size(3) == 5 * num_boxes + num_classes, "pred must have 5 * num_boxes + num_classes = ",
              5 * num_boxes + num_classes, " values per cell, got shape ", pred.sizes());
  TORCH_CHECK_VALUE(pred.size(1) < kMaxSide && pred.size(2) < kMaxSide, "pred: a grid of ", pred.size(1), " x ",
                    pred.size(2), " cells is too large: sides below 2^30");
  const int64_t n = pred.size(0);
  TORCH_CHECK(targets.dim() == 3 && targets.size(0) == n && targets.size(2) == 5,
              "targets must have shape [", n, ", max_boxes, 5] (class, cx, cy, w, h), got ", targets.sizes());
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), "targets must be a floating-point tensor, got ",
              targets.scalar_type());
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == n, "counts must have shape [", n, "], got ", counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong || counts.scalar_type() == at::kInt,
              "counts must be int64 or int32, got ", counts.scalar_type());
  TORCH_CHECK(targets.device() == pred.device() && counts.device() == pred.device(),
              "targets and counts must be on the device of pred, got ", targets.device(), ", ", counts.device(),
              " and ", pred.device());
  TORCH_CHECK(std::isfinite(lambda_coord) && lambda_coord >= 0, "lambda_coord must be finite and >= 0, got ",
              lambda_coord);
  TORCH_CHECK(std::isfinite(lambda_noobj) && lambda_noobj >= 0, "lambda_noobj must be finite and >= 0, got ",
              lambda_noobj);
  return {static_cast<int>(pred.size(1)), static_cast<int>(pred.size(2)), static_cast<int>(num_boxes),
          static_cast<int>(num_classes),  lambda_coord,                    lambda_noobj,
          parse_wh(wh),                   parse_conf_target(conf_target)};
}

void check_yolo_v1_grad(const at::Tensor& grad_terms, const at::Tensor& grad, const at::Tensor& responsible,
                        int64_t num_boxes) {
  TORCH_CHECK(grad.dim() == 4, "grad must have shape [N, S, S, values], got ", grad.sizes());
  check_kernel_float(grad, "grad");
  const int64_t n = grad.size(0);
  TORCH_CHECK(grad_terms.dim() == 2 && grad_terms.size(0) == n && grad_terms.size(1) == yolo::kTerms,
              "grad_terms must have shape [", n, ", 5], got ", grad_terms.sizes());
  TORCH_CHECK(grad_terms.scalar_type() == accumulate_type(grad.scalar_type()), "grad_terms must be ",
              accumulate_type(grad.scalar_type()), ", got ", grad_terms.scalar_type());
  TORCH_CHECK(responsible.dim() == 3 && responsible.size(0) == n && responsible.size(1) == grad.size(1) &&
                  responsible.size(2) == grad.size(2) && responsible.scalar_type() == at::kChar,
              "responsible must be int8 of shape [", n, ", ", grad.size(1), ", ", grad.size(2), "], got ",
              responsible.scalar_type(), " ", responsible.sizes());
  TORCH_CHECK_VALUE(num_boxes >= 1 && num_boxes <= kMaxBoxes && 5 * num_boxes <= grad.size(3),
                    "num_boxes must be in [1, ", kMaxBoxes, "] with 5 * num_boxes <= ", grad.size(3), ", got ",
                    num_boxes);
  TORCH_CHECK(grad_terms.device() == grad.device() && responsible.device() == grad.device(),
              "grad_terms, grad and responsible must be on one device, got ", grad_terms.device(), ", ",
              grad.device(), " and ", responsible.device());
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // The YOLOv1 loss of pred [N, H, W, 5B + C] against targets [N, M, 5] (class, cx, cy, w, h in
  // image fractions; the first counts[n] rows real). Returns the per-image terms [N, 5] (coord,
  // size, obj, noobj, class; float32 for half pred), the gradient of their sum with respect to
  // pred (shape and dtype of pred; empty when not compute_grad) and the responsible predictor of
  // each cell [N, H, W] (int8, -1 where no object), which is what the backward needs.
  m.def(
      "yolo_v1_loss(Tensor pred, Tensor targets, Tensor counts, int num_boxes, int num_classes, "
      "float lambda_coord, float lambda_noobj, str wh, str conf_target, bool compute_grad) "
      "-> (Tensor, Tensor, Tensor)");
  // d(sum_k grad_terms[n, k] * terms[n, k]) / d pred: the saved gradient, each value scaled by
  // the incoming gradient of the term it feeds.
  m.def("_yolo_v1_loss_backward(Tensor grad_terms, Tensor grad, Tensor responsible, int num_boxes) -> Tensor");
}
