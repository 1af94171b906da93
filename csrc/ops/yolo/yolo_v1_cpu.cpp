// CPU kernels of the fused YOLOv1 loss: one pass over the cells computes the terms and the
// gradient; the backward scales the saved gradient. Parallel over images; within an image the
// cells are summed in row-major order, so the result does not depend on the thread count.
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

#include "../checks.h"
#include "../common.h"
#include "yolo_v1.h"

namespace fastmtl {
namespace {

// Prediction values per parallel task, about 100 us of work: below it a thread hand-off costs
// more than it saves (and far more on a loaded machine), so the paper's batch of 64 x 7 x 7 x 30
// values runs on one thread.
constexpr int64_t kValuesPerTask = int64_t(1) << 17;

// Values are readable here: reject what the kernel would otherwise read as a wrong object.
template <typename T>
void check_target_values(const T* targets, const int64_t* counts, int64_t n, int64_t max_boxes, int classes) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(counts[i] >= 0 && counts[i] <= max_boxes, "counts[", i, "] = ", counts[i],
                      " must be in [0, ", max_boxes, "] (the rows of targets)");
    for (int64_t k = 0; k < counts[i]; ++k) {
      const T* t = targets + 5 * (i * max_boxes + k);
      const bool finite = std::isfinite(t[0]) && std::isfinite(t[1]) && std::isfinite(t[2]) && std::isfinite(t[3]) &&
                          std::isfinite(t[4]);
      TORCH_CHECK_VALUE(finite, "targets[", i, ", ", k, "] contains NaN or infinite values");
      TORCH_CHECK_VALUE(yolo::class_of(t[0], classes) >= 0 && t[0] == std::floor(t[0]), "targets[", i, ", ", k,
                        ", 0] = ", t[0], " is not a class index in [0, ", classes, ")");
      TORCH_CHECK_VALUE(t[1] >= 0 && t[1] <= 1 && t[2] >= 0 && t[2] <= 1, "targets[", i, ", ", k,
                        "]: the centre (", t[1], ", ", t[2], ") must be in [0, 1] (image fractions)");
      TORCH_CHECK_VALUE(t[3] >= 0 && t[4] >= 0, "targets[", i, ", ", k, "]: the size (", t[3], ", ", t[4],
                        ") must be >= 0");
    }
  }
}

template <typename scalar_t>
void forward_images(const scalar_t* pred, const at::opmath_type<scalar_t>* targets, const int64_t* counts, int64_t n,
                    int64_t max_boxes, const yolo::Params<at::opmath_type<scalar_t>>& q,
                    at::opmath_type<scalar_t>* terms, scalar_t* grad, int8_t* responsible) {
  using T = at::opmath_type<scalar_t>;
  const int64_t cells = int64_t(q.grid_h) * q.grid_w, values = q.values();
  const int64_t grain = std::max<int64_t>(1, kValuesPerTask / std::max<int64_t>(cells * values, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t img = begin; img < end; ++img) {
      const T* t = targets + 5 * img * max_boxes;
      T sums[yolo::kTerms] = {};
      for (int64_t cell = 0; cell < cells; ++cell) {
        const int i = static_cast<int>(cell / q.grid_w), j = static_cast<int>(cell % q.grid_w);
        const int64_t k = yolo::cell_object(t, counts[img], i, j, q.grid_h, q.grid_w);
        const int64_t at = img * cells + cell;
        const int r = yolo::cell_loss(pred + at * values, k >= 0 ? t + 5 * k : nullptr, i, j, q, sums,
                                      grad ? grad + at * values : nullptr);
        responsible[at] = static_cast<int8_t>(r);
      }
      std::copy(sums, sums + yolo::kTerms, terms + yolo::kTerms * img);
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> yolo_v1_loss_cpu(const at::Tensor& pred, const at::Tensor& targets,
                                                               const at::Tensor& counts, int64_t num_boxes,
                                                               int64_t num_classes, double lambda_coord,
                                                               double lambda_noobj, c10::string_view wh,
                                                               c10::string_view conf_target, bool compute_grad) {
  const yolo::Params<double> q = check_yolo_v1_args(pred, targets, counts, num_boxes, num_classes, lambda_coord,
                                                    lambda_noobj, wh, conf_target);
  const auto acc = accumulate_type(pred.scalar_type());
  const int64_t n = pred.size(0), max_boxes = targets.size(1);
  auto terms = at::zeros({n, yolo::kTerms}, pred.options().dtype(acc));
  auto grad = compute_grad ? at::empty(pred.sizes(), pred.options()) : at::empty({0}, pred.options());
  auto responsible = at::empty({n, pred.size(1), pred.size(2)}, pred.options().dtype(at::kChar));
  const at::Tensor c = counts.to(at::kLong).contiguous();
  const at::Tensor t = targets.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "yolo_v1_check_targets", [&] {
    check_target_values(t.const_data_ptr<scalar_t>(), c.const_data_ptr<int64_t>(), n, max_boxes, q.classes);
  });
  if (pred.numel() == 0) return {terms, grad, responsible};
  const at::Tensor p = pred.contiguous();
  FASTMTL_DISPATCH_BOXES(p.scalar_type(), "yolo_v1_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    forward_images(p.const_data_ptr<scalar_t>(), t.const_data_ptr<T>(), c.const_data_ptr<int64_t>(), n, max_boxes,
                   params_as<T>(q), terms.mutable_data_ptr<T>(),
                   compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr, responsible.mutable_data_ptr<int8_t>());
  });
  return {terms, grad, responsible};
}

at::Tensor yolo_v1_loss_backward_cpu(const at::Tensor& grad_terms, const at::Tensor& grad,
                                     const at::Tensor& responsible, int64_t num_boxes) {
  check_yolo_v1_grad(grad_terms, grad, responsible, num_boxes);
  auto out = at::empty(grad.sizes(), grad.options());
  if (out.numel() == 0) return out;
  const at::Tensor g = grad.contiguous(), gt = grad_terms.contiguous(), r = responsible.contiguous();
  const int64_t cells_per_image = grad.size(1) * grad.size(2), values = grad.size(3);
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "yolo_v1_loss_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const T* tp = gt.const_data_ptr<T>();
    const int8_t* rp = r.const_data_ptr<int8_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int boxes = static_cast<int>(num_boxes);
    at::parallel_for(0, r.numel(), std::max<int64_t>(1, kValuesPerTask / values), [&](int64_t begin, int64_t end) {
      for (int64_t cell = begin; cell < end; ++cell) {
        const T* scale = tp + yolo::kTerms * (cell / cells_per_image);
        const scalar_t* g = gp + cell * values;
        scalar_t* o = op + cell * values;
        // The terms of a cell's values in order (yolo::term_of, unrolled): per box x, y -> coord,
        // w, h -> size, conf -> obj or noobj; then the classes.
        for (int b = 0; b < boxes; ++b, g += 5, o += 5) {
          const T conf = scale[b == rp[cell] ? yolo::kObj : yolo::kNoObj];
          o[0] = static_cast<scalar_t>(static_cast<T>(g[0]) * scale[yolo::kCoord]);
          o[1] = static_cast<scalar_t>(static_cast<T>(g[1]) * scale[yolo::kCoord]);
          o[2] = static_cast<scalar_t>(static_cast<T>(g[2]) * scale[yolo::kSize]);
          o[3] = static_cast<scalar_t>(static_cast<T>(g[3]) * scale[yolo::kSize]);
          o[4] = static_cast<scalar_t>(static_cast<T>(g[4]) * conf);
        }
        for (int64_t c = 5 * int64_t(boxes); c < values; ++c, ++g, ++o)
          *o = static_cast<scalar_t>(static_cast<T>(*g) * scale[yolo::kClass]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("yolo_v1_loss", &yolo_v1_loss_cpu);
  m.impl("_yolo_v1_loss_backward", &yolo_v1_loss_backward_cpu);
}

}  // namespace fastmtl
