// Schemas and argument checks of the fused yolov5-mode anchor loss.
#include "yolo_v5.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"

namespace fastmtl {

yolo3::Scales<double> check_yolov5_args(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                                        const at::Tensor& anchors, at::ArrayRef<double> strides, double anchor_t) {
  const yolo3::Scales<double> s = check_yolo_v3_args(preds, targets, counts, anchors, strides, 0.0);
  TORCH_CHECK_VALUE(std::isfinite(anchor_t) && anchor_t > 0, "anchor_t must be finite and > 0, got ", anchor_t);
  // the kernels keep each prediction's last candidate slot, (o A + a) M + k, in an int32
  TORCH_CHECK_VALUE(yolo5::slots(s.anchors, targets.size(1)) < (int64_t(1) << 31), "targets: ", targets.size(1),
                    " rows per image make 5 x ", s.anchors, " x ", targets.size(1),
                    " candidate slots; at most 2^31 - 1 are supported");
  return s;
}

YoloV5Buffers yolov5_buffers(at::TensorList preds, int64_t max_boxes, bool compute_grad) {
  const auto opts = preds[0].options();
  const int64_t n = preds[0].size(0), anchors = preds[0].size(1), values = preds[0].size(4);
  const int64_t levels = static_cast<int64_t>(preds.size()), slots = yolo5::slots(anchors, max_boxes);
  YoloV5Buffers b;
  int64_t predictions = 0;
  for (const at::Tensor& p : preds) {
    b.preds.push_back(p.contiguous());
    if (compute_grad) b.obj_grads.push_back(at::empty(p.sizes().slice(0, 4), opts));
    b.winner_offset.push_back(predictions);
    predictions += p.numel() / values;
  }
  b.rows = at::empty(compute_grad ? at::IntArrayRef{n, levels, slots, values} : at::IntArrayRef{0}, opts);
  b.row_slots = at::empty({n, levels, slots}, opts.dtype(at::kLong));
  const auto acc = opts.dtype(accumulate_type(preds[0].scalar_type()));
  b.sums = at::empty({n, levels, yolo5::kTerms}, acc);
  b.candidates = at::empty({n, levels}, opts.dtype(at::kLong));
  b.winner = at::empty({predictions}, opts.dtype(at::kInt));
  b.tobj = at::empty({n, levels, slots}, acc);
  return b;
}

void check_yolov5_grad(const at::Tensor& grad_sums, at::TensorList obj_grads, const at::Tensor& rows,
                       const at::Tensor& row_slots) {
  const int64_t levels = static_cast<int64_t>(obj_grads.size());
  TORCH_CHECK(levels >= 1, "obj_grads must hold one tensor per scale");
  const int64_t n = obj_grads[0].dim() == 4 ? obj_grads[0].size(0) : -1;
  TORCH_CHECK(grad_sums.dim() == 3 && grad_sums.size(0) == n && grad_sums.size(1) == levels &&
                  grad_sums.size(2) == yolo5::kTerms,
              "grad_sums must have shape [", n, ", ", levels, ", 3], got ", grad_sums.sizes());
  TORCH_CHECK(rows.dim() == 4 && rows.size(0) == n && rows.size(1) == levels && rows.size(3) >= 5,
              "rows must have shape [", n, ", ", levels, ", S, 5 + C], got ", rows.sizes());
  TORCH_CHECK(row_slots.scalar_type() == at::kLong && row_slots.sizes() == rows.sizes().slice(0, 3),
              "row_slots must be int64 of shape ", rows.sizes().slice(0, 3), ", got ", row_slots.scalar_type(), " ",
              row_slots.sizes());
  check_kernel_float(rows, "rows");
  TORCH_CHECK(grad_sums.scalar_type() == accumulate_type(rows.scalar_type()), "grad_sums must be ",
              accumulate_type(rows.scalar_type()), ", got ", grad_sums.scalar_type());
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& g = obj_grads[l];
    TORCH_CHECK(g.dim() == 4 && g.size(0) == n && g.size(1) == obj_grads[0].size(1) &&
                    g.scalar_type() == rows.scalar_type() && g.device() == grad_sums.device(),
                "obj_grads[", l, "] must be ", rows.scalar_type(), " of shape [", n, ", A, H, W] on ",
                grad_sums.device(), ", got ", g.scalar_type(), " ", g.sizes(), " on ", g.device());
  }
  TORCH_CHECK(rows.device() == grad_sums.device() && row_slots.device() == grad_sums.device(),
              "rows and row_slots must be on the device of grad_sums");
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // The anchor-based YOLO loss with yolov5 7.0.14's rules (ComputeLoss), inputs as yolo_v3_loss's
  // and anchor_t. Returns per (image, scale) the unweighted sums [N, L, 3] (sum of 1 - CIoU over
  // the candidates, objectness BCE over every prediction, class BCE over the candidates' [C]
  // one-hots; float32 for half preds) and the number of candidates [N, L] (int64), from which the
  // caller takes yolov5's means; and the gradient of the sums, compact: the objectness gradient of
  // every prediction (obj_grads, [N, A, H_l, W_l] per scale; none when not compute_grad) and one
  // row per candidate slot (rows [N, L, S, 5 + C], S = 5 A M: box gradient, objectness target,
  // class gradient; row_slots [N, L, S], the flat index of its prediction in the scale, -1 for a
  // slot that is no candidate). Every other gradient value is 0.
  m.def(
      "yolov5_loss(Tensor[] preds, Tensor targets, Tensor counts, Tensor anchors, float[] strides, "
      "float anchor_t, bool compute_grad) -> (Tensor, Tensor, Tensor[], Tensor, Tensor)");
  // The gradient of every scale, [N, A, H_l, W_l, 5 + C]: the compact one scaled by the incoming
  // gradient of each value's sum, the rows of candidates that share a prediction added in slot order.
  m.def("_yolov5_loss_backward(Tensor grad_sums, Tensor[] obj_grads, Tensor rows, Tensor row_slots) -> Tensor[]");
}
