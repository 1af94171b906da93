// CPU kernels of the fused anchor-based YOLO loss: one pass over the predictions of every
// (image, scale) computes the terms and the gradient; the backward scales the saved gradient.
// Each (image, scale) sums in a fixed order and the scales are added in order: the result does
// not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "yolo_v3.h"

namespace fastmtl {
namespace {

// Prediction values per parallel task (about 100 us of work; see yolo_v1_cpu.cpp).
constexpr int64_t kValuesPerTask = int64_t(1) << 17;

template <typename scalar_t>
struct Views {
  std::vector<const scalar_t*> pred;
  std::vector<scalar_t*> obj_grad;  // empty: no gradient
  std::vector<int8_t*> assigned;
  scalar_t* rows;      // [N, M, values] or null
  int64_t* row_slots;  // [N, M, 2]
  int64_t max_boxes;
  int values;  // 5 + C
};

template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void forward_item(const Views<scalar_t>& v, const yolo3::Scales<T>& s, const T* targets, int64_t count,
                  int64_t img, int l, T thr, bool ciou, std::vector<yolo3::GtCell>& cells, T* sums) {
  cells.resize(count);
  for (int64_t k = 0; k < count; ++k) cells[k] = yolo3::assign(targets + 5 * k, s);
  const int64_t h = s.grid_h[l], w = s.grid_w[l], values = v.values;
  const bool grad = !v.obj_grad.empty();
  for (int a = 0; a < s.anchors; ++a) {
    for (int j = 0; j < h; ++j) {
      for (int i = 0; i < w; ++i) {
        const int64_t at = ((img * s.anchors + a) * h + j) * w + i;
        const scalar_t* p = v.pred[l] + at * values;
        const yolo3::Slot<T> q = yolo3::slot_of(s, l, a, j, i);
        const int64_t k = yolo3::slot_owner(cells.data(), count, l, a, i, j);
        const bool skip = k < 0 && yolo3::ignored(p, q, targets, count, thr);
        const int64_t row = img * v.max_boxes + k;  // target k's row, when k >= 0
        yolo3::prediction_loss(p, values - 5, q, k >= 0 ? targets + 5 * k : nullptr, skip, ciou, sums,
                               grad ? v.obj_grad[l] + at : nullptr, grad && k >= 0 ? v.rows + row * values : nullptr);
        v.assigned[l][at] = k >= 0 ? 1 : 0;
        if (k >= 0) {  // one prediction per target: no other task writes this row
          v.row_slots[2 * row] = l;
          v.row_slots[2 * row + 1] = at;
        }
      }
    }
  }
}

using Outputs = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>;

Outputs yolo_v3_loss_cpu(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                         const at::Tensor& anchors, at::ArrayRef<double> strides, double ignore_threshold,
                         bool compute_grad, bool ciou) {
  const yolo3::Scales<double> sd = check_yolo_v3_args(preds, targets, counts, anchors, strides, ignore_threshold);
  const auto acc = accumulate_type(preds[0].scalar_type());
  const int64_t n = preds[0].size(0), levels = sd.levels, max_boxes = targets.size(1);
  const int values = static_cast<int>(preds[0].size(4));
  YoloV3Buffers b = yolo_v3_buffers(preds, max_boxes, compute_grad);
  const std::vector<at::Tensor>& p = b.preds;
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  check_yolo_values_cpu(t, c, anc, values - 5, /*sizes_positive=*/true);
  FASTMTL_DISPATCH_BOXES(p[0].scalar_type(), "yolo_v3_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    Views<scalar_t> v{{}, {}, {}, compute_grad ? b.rows.mutable_data_ptr<scalar_t>() : nullptr,
                      b.row_slots.mutable_data_ptr<int64_t>(), max_boxes, values};
    int64_t cells_total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      v.pred.push_back(p[l].const_data_ptr<scalar_t>());
      if (compute_grad) v.obj_grad.push_back(b.obj_grads[l].mutable_data_ptr<scalar_t>());
      v.assigned.push_back(b.assigned[l].mutable_data_ptr<int8_t>());
      cells_total += sd.anchors * int64_t(sd.grid_h[l]) * sd.grid_w[l];
    }
    const yolo3::Scales<T> s = scales_as<T>(sd, anc.const_data_ptr<T>());
    const T* tp = t.const_data_ptr<T>();
    const int64_t* cp = c.const_data_ptr<int64_t>();
    T* out = b.partial.mutable_data_ptr<T>();
    const int64_t per_image = std::max<int64_t>(cells_total * values, 1);
    const int64_t grain = std::max<int64_t>(1, kValuesPerTask * levels / per_image);
    at::parallel_for(0, n * levels, grain, [&](int64_t begin, int64_t end) {
      std::vector<yolo3::GtCell> cells;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t img = item / levels;
        forward_item(v, s, tp + 5 * img * max_boxes, cp[img], img, static_cast<int>(item % levels),
                     static_cast<T>(ignore_threshold), ciou, cells, out + yolo3::kTerms * item);
      }
    });
  });
  return {b.partial.sum(1), b.obj_grads, b.assigned, b.rows, b.row_slots};
}

std::vector<at::Tensor> yolo_v3_loss_backward_cpu(const at::Tensor& grad_terms, at::TensorList obj_grads,
                                                  at::TensorList assigned, const at::Tensor& rows,
                                                  const at::Tensor& row_slots) {
  check_yolo_v3_grad(grad_terms, obj_grads, assigned, rows, row_slots);
  const at::Tensor gt = grad_terms.contiguous(), r = rows.contiguous(), rs = row_slots.contiguous();
  const int64_t values = rows.size(2), n = rows.size(0), max_boxes = rows.size(1);
  std::vector<at::Tensor> out;
  FASTMTL_DISPATCH_BOXES(rows.scalar_type(), "yolo_v3_loss_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* tp = gt.const_data_ptr<T>();
    std::vector<scalar_t*> dst;
    for (size_t l = 0; l < obj_grads.size(); ++l) {  // every row: zeros but its objectness, in one pass
      const at::Tensor g = obj_grads[l].contiguous(), a = assigned[l].contiguous();
      at::Tensor o = empty_prediction_grad(g, values);
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const int8_t* ap = a.const_data_ptr<int8_t>();
      scalar_t* op = o.mutable_data_ptr<scalar_t>();
      const int64_t per_image = g.numel() / std::max<int64_t>(n, 1);
      at::parallel_for(0, g.numel(), kValuesPerTask / 8, [&](int64_t begin, int64_t end) {
        for (int64_t slot = begin; slot < end; ++slot) {
          const T* scale = tp + yolo3::kTerms * (slot / per_image);
          std::fill_n(op + slot * values, values, scalar_t(0));
          op[slot * values + 4] =
              static_cast<scalar_t>(static_cast<T>(gp[slot]) * scale[ap[slot] ? yolo3::kObj : yolo3::kNoObj]);
        }
      });
      dst.push_back(op);
      out.push_back(o);
    }
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const int64_t* sp = rs.const_data_ptr<int64_t>();
    for (int64_t row = 0; row < n * max_boxes; ++row) {  // the assigned predictions' other values
      if (sp[2 * row] < 0) continue;
      const T* scale = tp + yolo3::kTerms * (row / max_boxes);
      scalar_t* o = dst[sp[2 * row]] + sp[2 * row + 1] * values;
      const scalar_t* g = rp + row * values;
      for (int e = 0; e < 4; ++e) o[e] = static_cast<scalar_t>(static_cast<T>(g[e]) * scale[yolo3::kBox]);
      for (int64_t e = 5; e < values; ++e) o[e] = static_cast<scalar_t>(static_cast<T>(g[e]) * scale[yolo3::kCls]);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("yolo_v3_loss", &yolo_v3_loss_cpu);
  m.impl("_yolo_v3_loss_backward", &yolo_v3_loss_backward_cpu);
}

}  // namespace fastmtl
