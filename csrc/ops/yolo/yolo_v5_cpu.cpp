// CPU kernels of the fused yolov5-mode anchor loss: per (image, scale), one pass over the
// objectness values and one over the candidate slots compute the sums and the gradient; the
// backward scales the saved gradient. Each (image, scale) sums in a fixed order: the result does
// not depend on the thread count.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "yolo_v5.h"

namespace fastmtl {
namespace {

// Prediction values per parallel task (about 100 us of work; see yolo_v1_cpu.cpp).
constexpr int64_t kValuesPerTask = int64_t(1) << 17;

template <typename scalar_t>
struct Views {
  std::vector<const scalar_t*> pred;
  std::vector<scalar_t*> obj_grad;  // empty: no gradient
  std::vector<int32_t*> winner;
  scalar_t* rows;      // [N, L, S, values] or null
  int64_t* row_slots;  // [N, L, S]
  using T = at::opmath_type<scalar_t>;
  T* tobj;  // [N, L, S]
  int64_t max_boxes, slots;
  int values, levels;
};

// The sums (box, obj, cls) and the candidates of image img at scale l.
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
void forward_item(const Views<scalar_t>& v, const yolo3::Scales<T>& s, const T* targets, int64_t count,
                  int64_t img, int l, T anchor_t, T* sums, int64_t* candidates) {
  const int64_t cells = int64_t(s.anchors) * s.grid_h[l] * s.grid_w[l], values = v.values;
  const scalar_t* p = v.pred[l] + img * cells * values;
  scalar_t* og = v.obj_grad.empty() ? nullptr : v.obj_grad[l] + img * cells;
  int32_t* win = v.winner[l] + img * cells;
  const int64_t item = img * v.levels + l;
  int64_t* rs = v.row_slots + item * v.slots;
  T* tobj = v.tobj + item * v.slots;
  T obj = T(0), box = T(0), cls = T(0);
  for (int64_t at = 0; at < cells; ++at) {  // BCE(x, 0) everywhere, corrected at the winners below
    T sig;
    obj += yolo5::softplus_sigmoid(static_cast<T>(p[at * values + 4]), &sig);
    if (og) og[at] = static_cast<scalar_t>(sig);
  }
  int64_t found = 0;
  for (int64_t q = 0; q < v.slots; ++q) {
    scalar_t* row = og ? v.rows + (item * v.slots + q) * values : nullptr;
    const yolo5::SlotLoss<T> r =
        yolo5::slot_loss(p, targets, count, v.max_boxes, q, s, l, static_cast<int>(values - 5), anchor_t, row);
    rs[q] = r.active ? img * cells + r.at : -1;
    tobj[q] = r.tobj;
    if (!r.active) continue;
    win[r.at] = static_cast<int32_t>(q);  // slots in order: the last write is the largest q
    box += r.box;
    cls += r.cls;
    ++found;
  }
  for (int64_t q = 0; q < v.slots; ++q) {  // each prediction's last candidate sets its target
    if (rs[q] < 0) continue;
    const int64_t at = rs[q] - img * cells;
    if (win[at] != q) continue;
    obj -= tobj[q] * static_cast<T>(p[at * values + 4]);
    if (og) og[at] = static_cast<scalar_t>(static_cast<T>(og[at]) - tobj[q]);
  }
  sums[yolo5::kBox] = box;
  sums[yolo5::kObj] = obj;
  sums[yolo5::kCls] = cls;
  *candidates = found;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor>;

Outputs yolov5_loss_cpu(at::TensorList preds, const at::Tensor& targets, const at::Tensor& counts,
                        const at::Tensor& anchors, at::ArrayRef<double> strides, double anchor_t, bool compute_grad) {
  const yolo3::Scales<double> sd = check_yolov5_args(preds, targets, counts, anchors, strides, anchor_t);
  const auto acc = accumulate_type(preds[0].scalar_type());
  const int64_t n = preds[0].size(0), levels = sd.levels, max_boxes = targets.size(1);
  const int values = static_cast<int>(preds[0].size(4));
  YoloV5Buffers b = yolov5_buffers(preds, max_boxes, compute_grad);
  const at::Tensor c = counts.to(at::kLong).contiguous(), t = targets.to(acc).contiguous();
  const at::Tensor anc = anchors.to(acc).contiguous();
  check_yolo_values_cpu(t, c, anc, values - 5, /*sizes_positive=*/false);
  FASTMTL_DISPATCH_BOXES(b.preds[0].scalar_type(), "yolov5_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    Views<scalar_t> v{{},
                      {},
                      {},
                      compute_grad ? b.rows.mutable_data_ptr<scalar_t>() : nullptr,
                      b.row_slots.mutable_data_ptr<int64_t>(),
                      b.tobj.mutable_data_ptr<T>(),
                      max_boxes,
                      yolo5::slots(sd.anchors, max_boxes),
                      values,
                      sd.levels};
    int64_t cells_total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      v.pred.push_back(b.preds[l].const_data_ptr<scalar_t>());
      if (compute_grad) v.obj_grad.push_back(b.obj_grads[l].mutable_data_ptr<scalar_t>());
      v.winner.push_back(b.winner.mutable_data_ptr<int32_t>() + b.winner_offset[l]);
      cells_total += sd.anchors * int64_t(sd.grid_h[l]) * sd.grid_w[l];
    }
    const yolo3::Scales<T> s = scales_as<T>(sd, anc.const_data_ptr<T>());
    const T* tp = t.const_data_ptr<T>();
    const int64_t* cp = c.const_data_ptr<int64_t>();
    T* sums = b.sums.mutable_data_ptr<T>();
    int64_t* found = b.candidates.mutable_data_ptr<int64_t>();
    // the objectness pass reads one value in 5 + C: a task's share is cells, not values
    const int64_t grain = std::max<int64_t>(1, kValuesPerTask * levels / std::max<int64_t>(cells_total * 8, 1));
    at::parallel_for(0, n * levels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t img = item / levels;
        forward_item(v, s, tp + 5 * img * max_boxes, cp[img], img, static_cast<int>(item % levels),
                     static_cast<T>(anchor_t), sums + yolo5::kTerms * item, found + item);
      }
    });
  });
  return {b.sums, b.candidates, b.obj_grads, b.rows, b.row_slots};
}

std::vector<at::Tensor> yolov5_loss_backward_cpu(const at::Tensor& grad_sums, at::TensorList obj_grads,
                                                 const at::Tensor& rows, const at::Tensor& row_slots) {
  check_yolov5_grad(grad_sums, obj_grads, rows, row_slots);
  const at::Tensor gs = grad_sums.contiguous(), r = rows.contiguous(), rs = row_slots.contiguous();
  const int64_t n = rows.size(0), levels = rows.size(1), slots = rows.size(2), values = rows.size(3);
  std::vector<at::Tensor> out;
  FASTMTL_DISPATCH_BOXES(rows.scalar_type(), "yolov5_loss_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* gp = gs.const_data_ptr<T>();
    std::vector<scalar_t*> dst;
    for (int64_t l = 0; l < levels; ++l) {  // every row: zeros but its objectness, in one pass
      const at::Tensor g = obj_grads[l].contiguous();
      at::Tensor o = empty_prediction_grad(g, values);
      const scalar_t* op_in = g.const_data_ptr<scalar_t>();
      scalar_t* op = o.mutable_data_ptr<scalar_t>();
      const int64_t per_image = g.numel() / std::max<int64_t>(n, 1);
      at::parallel_for(0, g.numel(), kValuesPerTask / 8, [&](int64_t begin, int64_t end) {
        std::fill(op + begin * values, op + end * values, scalar_t(0));
        for (int64_t at = begin; at < end; ++at) {
          const T scale = gp[yolo5::kTerms * (at / per_image * levels + l) + yolo5::kObj];
          op[at * values + 4] = static_cast<scalar_t>(static_cast<T>(op_in[at]) * scale);
        }
      });
      dst.push_back(op);
      out.push_back(o);
    }
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const int64_t* sp = rs.const_data_ptr<int64_t>();
    // the candidates' box and class values, added in slot order (several may share a prediction)
    at::parallel_for(0, n * levels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const T* scale = gp + yolo5::kTerms * item;
        for (int64_t q = item * slots; q < (item + 1) * slots; ++q) {
          if (sp[q] < 0) continue;
          scalar_t* o = dst[item % levels] + sp[q] * values;
          const scalar_t* g = rp + q * values;
          for (int e = 0; e < 4; ++e)
            o[e] = static_cast<scalar_t>(static_cast<T>(o[e]) + static_cast<T>(g[e]) * scale[yolo5::kBox]);
          for (int64_t e = 5; e < values; ++e)
            o[e] = static_cast<scalar_t>(static_cast<T>(o[e]) + static_cast<T>(g[e]) * scale[yolo5::kCls]);
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("yolov5_loss", &yolov5_loss_cpu);
  m.impl("_yolov5_loss_backward", &yolov5_loss_backward_cpu);
}

}  // namespace fastmtl
