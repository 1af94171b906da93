// Schemas and argument checks of the fused anchor-based YOLO loss.
#include "yolo_v3.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../grad_cache.h"
#include "../huge_pages.h"

namespace fastmtl {

yolo3::Scales<double> check_yolo_v3_args(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                                         const at::Tensor& anchors, at::ArrayRef<double> strides,
                                         double ignore_threshold) {
  const int64_t levels = static_cast<int64_t>(preds.size());
  TORCH_CHECK_VALUE(levels >= 1 && levels <= yolo3::kMaxLevels, "preds must hold 1 to ", yolo3::kMaxLevels,
                    " scales, got ", levels);
  const at::Tensor& p0 = preds[0];
  TORCH_CHECK(p0.dim() == 5 && p0.size(4) >= 5, "preds[0] must have shape [N, A, H, W, 5 + C], got ", p0.sizes());
  check_kernel_float(p0, "preds[0]");
  yolo3::Scales<double> s{static_cast<int>(levels), static_cast<int>(p0.size(1)), {}, {}, {}, nullptr};
  TORCH_CHECK_VALUE(p0.size(1) >= 1 && p0.size(1) < 1024, "preds: 1 to 1023 anchors per scale, got ", p0.size(1));
  for (int64_t l = 0; l < levels; ++l) {
    const at::Tensor& p = preds[l];
    TORCH_CHECK(p.dim() == 5 && p.size(0) == p0.size(0) && p.size(1) == p0.size(1) && p.size(4) == p0.size(4),
                "preds[", l, "] must have shape [", p0.size(0), ", ", p0.size(1), ", H, W, ", p0.size(4),
                "] like preds[0], got ", p.sizes());
    TORCH_CHECK(p.scalar_type() == p0.scalar_type() && p.device() == p0.device(), "preds[", l,
                "] must have the dtype and device of preds[0], got ", p.scalar_type(), " on ", p.device());
    TORCH_CHECK_VALUE(p.size(2) >= 1 && p.size(3) >= 1 && p.size(2) < (int64_t(1) << 30) &&
                          p.size(3) < (int64_t(1) << 30),
                      "preds[", l, "]: a grid of ", p.size(2), " x ", p.size(3),
                      " cells: sides from 1 to 2^30 - 1 (a target may be assigned to any scale)");
    s.grid_h[l] = static_cast<int>(p.size(2));
    s.grid_w[l] = static_cast<int>(p.size(3));
  }
  const int64_t n = p0.size(0);
  TORCH_CHECK(targets.dim() == 3 && targets.size(0) == n && targets.size(2) == 5, "targets must have shape [", n,
              ", max_boxes, 5] (class, cx, cy, w, h), got ", targets.sizes());
  TORCH_CHECK(at::isFloatingType(targets.scalar_type()), "targets must be a floating-point tensor, got ",
              targets.scalar_type());
  TORCH_CHECK(counts.dim() == 1 && counts.size(0) == n, "counts must have shape [", n, "], got ", counts.sizes());
  TORCH_CHECK(counts.scalar_type() == at::kLong || counts.scalar_type() == at::kInt,
              "counts must be int64 or int32, got ", counts.scalar_type());
  TORCH_CHECK(anchors.dim() == 3 && anchors.size(0) == levels && anchors.size(1) == p0.size(1) && anchors.size(2) == 2,
              "anchors must have shape [", levels, ", ", p0.size(1), ", 2], got ", anchors.sizes());
  TORCH_CHECK(at::isFloatingType(anchors.scalar_type()), "anchors must be a floating-point tensor, got ",
              anchors.scalar_type());
  TORCH_CHECK(targets.device() == p0.device() && counts.device() == p0.device() && anchors.device() == p0.device(),
              "targets, counts and anchors must be on the device of preds, got ", targets.device(), ", ",
              counts.device(), ", ", anchors.device(), " and ", p0.device());
  TORCH_CHECK_VALUE(static_cast<int64_t>(strides.size()) == levels, "strides must have ", levels,
                    " entries (one per scale), got ", strides.size());
  for (int64_t l = 0; l < levels; ++l) {
    TORCH_CHECK_VALUE(std::isfinite(strides[l]) && strides[l] > 0, "strides[", l, "] must be finite and > 0, got ",
                      strides[l]);
    s.stride[l] = strides[l];
  }
  TORCH_CHECK_VALUE(!std::isnan(ignore_threshold), "ignore_threshold must not be NaN");
  return s;
}

namespace {

template <typename T>
void check_values(const T* targets, const int64_t* counts, int64_t n, int64_t max_boxes, int classes,
                  const T* anchors, int64_t anchor_values, bool sizes_positive) {
  for (int64_t i = 0; i < anchor_values; ++i)
    TORCH_CHECK_VALUE(std::isfinite(anchors[i]) && anchors[i] > 0, "anchors must be finite and > 0, got ",
                      anchors[i]);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(counts[i] >= 0 && counts[i] <= max_boxes, "counts[", i, "] = ", counts[i],
                      " must be in [0, ", max_boxes, "] (the rows of targets)");
    for (int64_t k = 0; k < counts[i]; ++k) {
      const T* t = targets + 5 * (i * max_boxes + k);
      bool finite = true;
      for (int v = 0; v < 5; ++v) finite = finite && std::isfinite(t[v]);
      TORCH_CHECK_VALUE(finite, "targets[", i, ", ", k, "] contains NaN or infinite values");
      TORCH_CHECK_VALUE(t[0] >= 0 && t[0] < classes && t[0] == std::floor(t[0]), "targets[", i, ", ", k, ", 0] = ",
                        t[0], " is not a class index in [0, ", classes, ")");
      const bool sized = sizes_positive ? t[3] > 0 && t[4] > 0 : t[3] >= 0 && t[4] >= 0;
      TORCH_CHECK_VALUE(sized, "targets[", i, ", ", k, "]: the size (", t[3], ", ", t[4], ") must be ",
                        sizes_positive ? "> 0 (tw = log(w / anchor))" : ">= 0");
    }
  }
}

}  // namespace

void check_yolo_values_cpu(const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
                           int classes, bool sizes_positive) {
  AT_DISPATCH_FLOATING_TYPES(targets.scalar_type(), "yolo_check_values", [&] {
    check_values(targets.const_data_ptr<scalar_t>(), counts.const_data_ptr<int64_t>(), targets.size(0),
                 targets.size(1), classes, anchors.const_data_ptr<scalar_t>(), anchors.numel(), sizes_positive);
  });
}

YoloV3Buffers yolo_v3_buffers(at::TensorList preds, int64_t max_boxes, bool compute_grad) {
  const auto opts = preds[0].options();
  const int64_t n = preds[0].size(0), values = preds[0].size(4), levels = static_cast<int64_t>(preds.size());
  YoloV3Buffers b;
  for (const at::Tensor& p : preds) {
    b.preds.push_back(p.contiguous());
    if (compute_grad) b.obj_grads.push_back(at::empty(p.sizes().slice(0, 4), opts));
    b.assigned.push_back(at::empty(p.sizes().slice(0, 4), opts.dtype(at::kChar)));
  }
  b.rows = compute_grad ? at::zeros({n, max_boxes, values}, opts) : at::empty({0}, opts);
  b.row_slots = at::full({n, max_boxes, 2}, -1, opts.dtype(at::kLong));
  b.partial = at::zeros({n, levels, yolo3::kTerms}, opts.dtype(accumulate_type(preds[0].scalar_type())));
  return b;
}

at::Tensor empty_prediction_grad(const at::Tensor& obj_grad, int64_t values) {
  std::vector<int64_t> shape(obj_grad.sizes().begin(), obj_grad.sizes().end());
  shape.push_back(values);
  // written whole by the backward kernels: a recycled CPU buffer will do
  at::Tensor out = cached_cpu_empty(shape, obj_grad.options());
  advise_huge_pages(out);
  return out;
}

void check_yolo_v3_grad(const at::Tensor& grad_terms, at::TensorList obj_grads, at::TensorList assigned,
                        const at::Tensor& rows, const at::Tensor& row_slots) {
  TORCH_CHECK(!obj_grads.empty() && obj_grads.size() == assigned.size(),
              "obj_grads and assigned must hold one tensor per scale, got ", obj_grads.size(), " and ",
              assigned.size());
  const int64_t n = obj_grads[0].dim() == 4 ? obj_grads[0].size(0) : -1;
  TORCH_CHECK(grad_terms.dim() == 2 && grad_terms.size(0) == n && grad_terms.size(1) == yolo3::kTerms,
              "grad_terms must have shape [", n, ", 4], got ", grad_terms.sizes());
  TORCH_CHECK(rows.dim() == 3 && rows.size(0) == n && rows.size(2) >= 5, "rows must have shape [", n,
              ", M, 5 + C], got ", rows.sizes());
  TORCH_CHECK(row_slots.dim() == 3 && row_slots.size(0) == n && row_slots.size(1) == rows.size(1) &&
                  row_slots.size(2) == 2 && row_slots.scalar_type() == at::kLong,
              "row_slots must be int64 of shape [", n, ", ", rows.size(1), ", 2], got ", row_slots.scalar_type(), " ",
              row_slots.sizes());
  check_kernel_float(rows, "rows");
  TORCH_CHECK(grad_terms.scalar_type() == accumulate_type(rows.scalar_type()), "grad_terms must be ",
              accumulate_type(rows.scalar_type()), ", got ", grad_terms.scalar_type());
  for (size_t l = 0; l < obj_grads.size(); ++l) {
    const at::Tensor &g = obj_grads[l], &a = assigned[l];
    TORCH_CHECK(g.dim() == 4 && g.size(0) == n && g.scalar_type() == rows.scalar_type(), "obj_grads[", l,
                "] must be ", rows.scalar_type(), " of shape [", n, ", A, H, W], got ", g.scalar_type(), " ",
                g.sizes());
    TORCH_CHECK(a.scalar_type() == at::kChar && a.sizes() == g.sizes(), "assigned[", l, "] must be int8 of shape ",
                g.sizes(), ", got ", a.scalar_type(), " ", a.sizes());
    TORCH_CHECK(g.device() == grad_terms.device() && a.device() == grad_terms.device(),
                "grad_terms, obj_grads and assigned must be on one device");
  }
  TORCH_CHECK(rows.device() == grad_terms.device() && row_slots.device() == grad_terms.device(),
              "rows and row_slots must be on the device of grad_terms");
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // The anchor-based YOLO loss, YOLOv3 rules with the "mse" box term (1 - CIoU with ciou), of preds (one [N, A, H_l,
  // W_l, 5 + C] per scale) against targets [N, M, 5] (class, cx, cy, w, h image fractions; the
  // first counts[n] rows real), anchors [L, A, 2] in pixels and strides [L]. Returns the per-image
  // terms [N, 4] (box, obj, noobj, cls, unweighted; float32 for half preds) and the gradient of
  // their sum, compact: the objectness gradient of every prediction (obj_grads, [N, A, H_l, W_l]
  // per scale in the dtype of preds; none when not compute_grad), which predictions are assigned
  // (assigned, int8, same shapes), and the whole gradient rows of the assigned ones (rows [N, M,
  // 5 + C], row n, k for target k; row_slots [N, M, 2] = (scale, flat index of the prediction in
  // its scale), -1 where target k has no prediction); every other gradient value is 0.
  m.def(
      "yolo_v3_loss(Tensor[] preds, Tensor targets, Tensor counts, Tensor anchors, float[] strides, "
      "float ignore_threshold, bool compute_grad, bool ciou=False) -> (Tensor, Tensor[], Tensor[], Tensor, Tensor)");
  // The gradient of every scale, [N, A, H_l, W_l, 5 + C]: the compact one scaled by the incoming
  // gradient of each value's term.
  m.def(
      "_yolo_v3_loss_backward(Tensor grad_terms, Tensor[] obj_grads, Tensor[] assigned, Tensor rows, "
      "Tensor row_slots) -> Tensor[]");
}
