// Schemas and argument checks of the box IoU family.
#include "box_iou.h"

#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace fastmtl {

static void check_boxes(const at::Tensor& boxes, const char* name) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, name, " must have shape [N, 4], got ",
              boxes.sizes());
  check_kernel_float(boxes, name);
}

box::Variant parse_box_iou_kind(c10::string_view kind) {
  static constexpr Choice<box::Variant> kKinds[] = {
      {"iou", box::kIoU}, {"giou", box::kGIoU}, {"diou", box::kDIoU}, {"ciou", box::kCIoU}};
  return parse_choice(kind, "kind", kKinds);
}

box::Variant check_box_iou_args(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind,
                                double eps, bool aligned) {
  check_boxes(boxes1, "boxes1");
  check_boxes(boxes2, "boxes2");
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "boxes1 and boxes2 must have the same dtype, got ",
              boxes1.scalar_type(), " and ", boxes2.scalar_type());
  TORCH_CHECK(boxes1.device() == boxes2.device(), "boxes1 and boxes2 must be on the same device, got ",
              boxes1.device(), " and ", boxes2.device());
  TORCH_CHECK(!aligned || boxes1.size(0) == boxes2.size(0),
              "boxes1 and boxes2 must hold the same number of boxes, got ", boxes1.size(0), " and ",
              boxes2.size(0));
  const box::Variant variant = parse_box_iou_kind(kind);
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "eps must be finite and >= 0, got ", eps);
  return variant;
}

void check_box_iou_grad(const at::Tensor& grad, const at::Tensor& boxes1, const at::Tensor& boxes2,
                        bool aligned) {
  const bool shape_ok = aligned ? (grad.dim() == 1 && grad.size(0) == boxes1.size(0))
                                : (grad.dim() == 2 && grad.size(0) == boxes1.size(0) &&
                                   grad.size(1) == boxes2.size(0));
  TORCH_CHECK(shape_ok, "grad has shape ", grad.sizes(), ", which does not match boxes1 ", boxes1.sizes(),
              " and boxes2 ", boxes2.sizes());
  TORCH_CHECK(grad.device() == boxes1.device(), "grad must be on the device of the boxes, got ",
              grad.device(), " and ", boxes1.device());
  const auto want = accumulate_type(boxes1.scalar_type());
  TORCH_CHECK(grad.scalar_type() == want, "grad must be ", want, ", got ", grad.scalar_type());
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // kind: "iou", "giou", "diou" or "ciou". Pairwise: [N,4] x [M,4] -> [N,M], union without eps
  // (torchvision.ops.*box_iou). Aligned: [N,4] x [N,4] -> [N], eps in every denominator
  // (torchvision.ops.*_box_iou_loss).
  m.def("pairwise_box_iou(Tensor boxes1, Tensor boxes2, str kind, float eps) -> Tensor");
  m.def("_pairwise_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str kind, float eps)"
        " -> (Tensor, Tensor)");
  m.def("aligned_box_iou(Tensor boxes1, Tensor boxes2, str kind, float eps) -> Tensor");
  m.def("_aligned_box_iou_backward(Tensor grad, Tensor boxes1, Tensor boxes2, str kind, float eps)"
        " -> (Tensor, Tensor)");
}
