// CPU kernels of the fused anchor-based YOLO loss: one pass over the predictions of every
// (image, scale) computes the terms and the gradient; the backward scales the saved gradient.
// Each (image, scale) sums in a fixed order and the scales are added in order: the result does
// not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
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

template <typename T>
void check_values(const T* targets, const int64_t* counts, int64_t n, int64_t max_boxes, int classes,
                  const T* anchors, int64_t anchor_values) {
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
      TORCH_CHECK_VALUE(t[3] > 0 && t[4] > 0, "targets[", i, ", ", k, "]: the size (", t[3], ", ", t[4],
                        ") must be > 0 (tw = log(w / anchor))");
    }
  }
}

template <typename scalar_t>
struct Views {
  std::vector<const scalar_t*> pred;
  std::vector<scalar_t*> grad;  // empty: no gradient
  std::vector<int8_t*> assigned;
  int values;  // 5 + C
};

template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void forward_item(const Views<scalar_t>& v, const yolo3::Scales<T>& s, const T* targets, int64_t count,
                  int64_t img, int l, T thr, std::vector<yolo3::GtCell>& cells, T* sums) {
  cells.resize(count);
  for (int64_t k = 0; k < count; ++k) cells[k] = yolo3::assign(targets + 5 * k, s);
  const int64_t h = s.grid_h[l], w = s.grid_w[l], values = v.values;
  for (int a = 0; a < s.anchors; ++a) {
    for (int j = 0; j < h; ++j) {
      for (int i = 0; i < w; ++i) {
        const int64_t at = ((img * s.anchors + a) * h + j) * w + i;
        const scalar_t* p = v.pred[l] + at * values;
        const yolo3::Slot<T> q = yolo3::slot_of(s, l, a, j, i);
        const int64_t k = yolo3::slot_owner(cells.data(), count, l, a, i, j);
        const bool skip = k < 0 && yolo3::ignored(p, q, targets, count, thr);
        const bool assigned = yolo3::prediction_loss(p, values - 5, q, k >= 0 ? targets + 5 * k : nullptr, skip, sums,
                                                     v.grad.empty() ? nullptr : v.grad[l] + at * values);
        v.assigned[l][at] = assigned ? 1 : 0;
      }
    }
  }
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> yolo_v3_loss_cpu(
    at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts, const at::Tensor& anchors,
    at::ArrayRef<double> strides, double ignore_threshold, bool compute_grad) {
  const yolo3::Scales<double> sd = check_yolo_v3_args(preds, targets, counts, anchors, strides, ignore_threshold);
  const auto acc = accumulate_type(preds[0].scalar_type());
  const int64_t n = preds[0].size(0), levels = sd.levels, max_boxes = targets.size(1);
  const int values = static_cast<int>(preds[0].size(4));
  std::vector<at::Tensor> p(levels), grads, assigned(levels);
  for (int64_t l = 0; l < levels; ++l) {
    p[l] = preds[l].contiguous();
    if (compute_grad) grads.push_back(at::empty(preds[l].sizes(), preds[l].options()));
    assigned[l] = at::empty(preds[l].sizes().slice(0, 4), preds[l].options().dtype(at::kChar));
  }
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  at::Tensor partial = at::zeros({n, levels, yolo3::kTerms}, preds[0].options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "yolo_v3_check_values", [&] {
    check_values(t.const_data_ptr<scalar_t>(), c.const_data_ptr<int64_t>(), n, max_boxes, values - 5,
                 anc.const_data_ptr<scalar_t>(), anc.numel());
  });
  FASTMTL_DISPATCH_BOXES(p[0].scalar_type(), "yolo_v3_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    Views<scalar_t> v{{}, {}, {}, values};
    int64_t cells_total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      v.pred.push_back(p[l].const_data_ptr<scalar_t>());
      if (compute_grad) v.grad.push_back(grads[l].mutable_data_ptr<scalar_t>());
      v.assigned.push_back(assigned[l].mutable_data_ptr<int8_t>());
      cells_total += sd.anchors * int64_t(sd.grid_h[l]) * sd.grid_w[l];
    }
    const yolo3::Scales<T> s = scales_as<T>(sd, anc.const_data_ptr<T>());
    const T* tp = t.const_data_ptr<T>();
    const int64_t* cp = c.const_data_ptr<int64_t>();
    T* out = partial.mutable_data_ptr<T>();
    const int64_t per_image = std::max<int64_t>(cells_total * values, 1);
    const int64_t grain = std::max<int64_t>(1, kValuesPerTask * levels / per_image);
    at::parallel_for(0, n * levels, grain, [&](int64_t begin, int64_t end) {
      std::vector<yolo3::GtCell> cells;
      for (int64_t item = begin; item < end; ++item) {
        const int64_t img = item / levels;
        forward_item(v, s, tp + 5 * img * max_boxes, cp[img], img, static_cast<int>(item % levels),
                     static_cast<T>(ignore_threshold), cells, out + yolo3::kTerms * item);
      }
    });
  });
  return {partial.sum(1), grads, assigned};
}

std::vector<at::Tensor> yolo_v3_loss_backward_cpu(const at::Tensor& grad_terms, at::TensorList grads,
                                                  at::TensorList assigned) {
  check_yolo_v3_grad(grad_terms, grads, assigned);
  const at::Tensor gt = grad_terms.contiguous();
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < grads.size(); ++l) {
    const at::Tensor g = grads[l].contiguous(), a = assigned[l].contiguous();
    at::Tensor o = at::empty(g.sizes(), g.options());
    const int64_t values = g.size(4), per_image = a.numel() / std::max<int64_t>(g.size(0), 1);
    FASTMTL_DISPATCH_BOXES(g.scalar_type(), "yolo_v3_loss_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const int8_t* ap = a.const_data_ptr<int8_t>();
      const T* tp = gt.const_data_ptr<T>();
      scalar_t* op = o.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, a.numel(), std::max<int64_t>(1, kValuesPerTask / values), [&](int64_t begin, int64_t end) {
        for (int64_t slot = begin; slot < end; ++slot) {
          const T* scale = tp + yolo3::kTerms * (slot / per_image);
          for (int64_t e = 0; e < values; ++e) {
            const int64_t at = slot * values + e;
            op[at] = static_cast<scalar_t>(static_cast<T>(gp[at]) * scale[yolo3::term_of(e, ap[slot] != 0)]);
          }
        }
      });
    });
    out.push_back(o);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("yolo_v3_loss", &yolo_v3_loss_cpu);
  m.impl("_yolo_v3_loss_backward", &yolo_v3_loss_backward_cpu);
}

}  // namespace fastmtl
