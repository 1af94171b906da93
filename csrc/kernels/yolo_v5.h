#pragma once
// Torch-free math of the fused yolov5-mode anchor loss (yolov5 7.0.14's ComputeLoss), shared by
// the CPU and CUDA kernels. The rules are those of fastmtl/ops/_yolo_anchor_reference.py (mode
// "yolov5"), which the tests hold the kernels to; layouts as in yolo_v3.h.
//
// Per image and scale, target k yields a candidate (offset o, anchor a) for each anchor whose
// shape ratio fits (max(r, 1/r) < anchor_t on both sides, r = gt size / prior) and each offset
// that applies: o = 0 its own cell, 1-4 the neighbour left, up, right, down when the centre lies
// in that half of its cell, more than one cell from that image edge. Candidates are ordered
// o-major, then a, then k (yolov5's order) and numbered q = (o A + a) M + k. Each pays
//   box = 1 - CIoU((2 sig(xy) - 0.5, (2 sig(wh))^2 prior), (g_xy - cell, g_wh))
//   cls = sum_c BCE(class_c, [c == class])                                  (only for C > 1)
// and every prediction pays obj = BCE(obj, t), t = max(CIoU, 0) of the last candidate (largest
// q) in its (anchor, cell), 0 where there is none. Means and gains are applied outside: the
// kernels return the sums per (image, scale) and the number of candidates.
// BCE(x, t) = BCE(x, 0) - t x, so the objectness sum is BCE(x, 0) over every prediction, less
// t x at each cell's last candidate; its gradient sig(x) - t.

#include <cmath>
#include <cstdint>

#include "hd.h"
#include "yolo_v3.h"

namespace fastmtl {
namespace yolo5 {

using std::exp;
using std::floor;
using std::log1p;
using std::trunc;
using yolo3::greater;
using yolo3::sigmoid;

enum Term : int { kBox = 0, kObj = 1, kCls = 2, kTerms = 3 };
constexpr int kOffsets = 5;

// BCE(x, 0) = softplus(x) and, in *sig, sigmoid(x), from one exponential.
template <typename T>
FASTMTL_HD T softplus_sigmoid(T x, T* sig) {
  const T e = exp(-(x < T(0) ? -x : x));
  *sig = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  return greater(x, T(0)) + log1p(e);
}

// A candidate: its cell and its target box (cx, cy, w, h) in cells, relative to the cell.
template <typename T>
struct Candidate {
  bool active;
  int gi, gj;
  T box[4];
};

// v - floor(v): torch's v % 1.
template <typename T>
FASTMTL_HD T frac(T v) { return v - floor(v); }

// trunc(v) (torch's .long()) clamped into [0, size - 1], in floating point first: no overflow.
template <typename T>
FASTMTL_HD int clamp_trunc(T v, int size) {
  const T c = trunc(v);
  return !(c > T(0)) ? 0 : (c >= static_cast<T>(size - 1) ? size - 1 : static_cast<int>(c));
}

// Candidate (o, prior) of target t = (class, cx, cy, w, h) at a scale of w x h cells; prior in cells.
template <typename T>
FASTMTL_HD Candidate<T> candidate(const T* t, int o, T prior_w, T prior_h, int w, int h, T anchor_t) {
  Candidate<T> c{false, 0, 0, {T(0), T(0), T(0), T(0)}};
  const T sw = static_cast<T>(w), sh = static_cast<T>(h);
  const T gx = t[1] * sw, gy = t[2] * sh, gw = t[3] * sw, gh = t[4] * sh;
  const T rw = gw / prior_w, rh = gh / prior_h;
  const T worst = greater(greater(rw, T(1) / rw), greater(rh, T(1) / rh));
  if (!(worst < anchor_t)) return c;
  const T ix = sw - gx, iy = sh - gy;
  const T half = T(0.5);
  T ox = T(0), oy = T(0);
  switch (o) {
    case 0: c.active = true; break;
    case 1: c.active = frac(gx) < half && gx > T(1); ox = half; break;
    case 2: c.active = frac(gy) < half && gy > T(1); oy = half; break;
    case 3: c.active = frac(ix) < half && ix > T(1); ox = -half; break;
    default: c.active = frac(iy) < half && iy > T(1); oy = -half; break;
  }
  if (!c.active) return c;
  c.gi = clamp_trunc(gx - ox, w);
  c.gj = clamp_trunc(gy - oy, h);
  c.box[0] = gx - static_cast<T>(c.gi);  // from the clamped cell, as yolov5
  c.box[1] = gy - static_cast<T>(c.gj);
  c.box[2] = gw;
  c.box[3] = gh;
  return c;
}

// The CIoU of prediction p (decoded with yolov5's 2 sig - 0.5 and (2 sig)^2 prior) against the
// candidate's box; with grad, d(1 - CIoU)/d(p[0..3]) in grad[4].
template <typename T, typename S>
FASTMTL_HD T prediction_ciou(const S* p, const Candidate<T>& c, T prior_w, T prior_h, T* grad) {
  T s[4];
  for (int k = 0; k < 4; ++k) s[k] = sigmoid(static_cast<T>(p[k]));
  const T sw = s[2] * T(2), sh = s[3] * T(2);
  const T decoded[4] = {s[0] * T(2) - T(0.5), s[1] * T(2) - T(0.5), sw * sw * prior_w, sh * sh * prior_h};
  const T ciou = yolo3::ciou_cxcywh(decoded, c.box, grad);
  if (grad) {
    // d(2 sig - 0.5) = 2 sig (1 - sig); d((2 sig)^2 prior) = 2 (2 sig) 2 sig (1 - sig) prior
    grad[0] *= T(2) * s[0] * (T(1) - s[0]);
    grad[1] *= T(2) * s[1] * (T(1) - s[1]);
    grad[2] *= T(4) * sw * s[2] * (T(1) - s[2]) * prior_w;
    grad[3] *= T(4) * sh * s[3] * (T(1) - s[3]) * prior_h;
  }
  return ciou;
}

// Number of candidate slots (o, a, k) of one image and scale.
FASTMTL_HD int64_t slots(int anchors, int64_t max_boxes) { return int64_t(kOffsets) * anchors * max_boxes; }

// Slot q = (o A + a) M + k of one image at scale l: the candidate, the index of its prediction
// among the image's [A, H, W] of the scale in *at (-1 for none) and the prior in cells.
template <typename T>
FASTMTL_HD Candidate<T> slot_candidate(const T* targets, int64_t count, int64_t max_boxes, int64_t q,
                                       const yolo3::Scales<T>& s, int l, T anchor_t, int64_t* at, T* pw, T* ph) {
  const int h = s.grid_h[l], w = s.grid_w[l];
  const int64_t k = q % max_boxes;
  const int a = static_cast<int>(q / max_boxes % s.anchors), o = static_cast<int>(q / (max_boxes * s.anchors));
  const yolo3::Slot<T> prior = yolo3::slot_of(s, l, a, 0, 0);  // the prior in cells: pixels / stride
  *pw = prior.prior_w;
  *ph = prior.prior_h;
  const Candidate<T> c = k < count ? candidate(targets + 5 * k, o, *pw, *ph, w, h, anchor_t) : Candidate<T>{};
  *at = c.active ? (int64_t(a) * h + c.gj) * w + c.gi : -1;
  return c;
}

// What slot q adds: whether it is a candidate, the prediction it lands on (its index among the
// image's predictions of the scale), the objectness target max(CIoU, 0), and its box and class terms.
template <typename T>
struct SlotLoss {
  bool active;
  int64_t at;
  T tobj, box, cls;
};

// Slot q = (o A + a) M + k of one image at scale l: preds are the image's [A, H, W, 5 + C] of the
// scale, targets its [M, 5] (the first count real). With row (5 + C
// values), the slot's gradient row: d(1 - CIoU) in 0..3, the objectness target in 4, the class
// gradient in 5.. (zeros for a slot that is no candidate, and for C = 1).
template <typename T, typename S>
FASTMTL_HD SlotLoss<T> slot_loss(const S* preds, const T* targets, int64_t count, int64_t max_boxes, int64_t q,
                                 const yolo3::Scales<T>& s, int l, int classes, T anchor_t, S* row) {
  const int values = 5 + classes;
  const int64_t k = q % max_boxes;  // the target
  SlotLoss<T> out{false, -1, T(0), T(0), T(0)};
  T pw, ph;
  const Candidate<T> c = slot_candidate(targets, count, max_boxes, q, s, l, anchor_t, &out.at, &pw, &ph);
  if (!c.active) {
    if (row)
      for (int e = 0; e < values; ++e) row[e] = S(0);
    return out;
  }
  out.active = true;
  const S* p = preds + out.at * values;
  T g[4];
  const T ciou = prediction_ciou(p, c, pw, ph, row ? g : nullptr);
  out.box = T(1) - ciou;
  out.tobj = greater(ciou, T(0));
  if (classes > 1) out.cls = yolo3::class_terms<T>(p + 5, classes, static_cast<int>(targets[5 * k]), row ? row + 5 : nullptr);
  if (row) {
    for (int e = 0; e < 4; ++e) row[e] = static_cast<S>(g[e]);
    row[4] = static_cast<S>(out.tobj);
    if (classes == 1) row[5] = S(0);
  }
  return out;
}

}  // namespace yolo5
}  // namespace fastmtl
