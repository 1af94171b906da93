#pragma once
// Torch-free math of the fused anchor-based YOLO loss (YOLOv2/v3 rules, box term "mse"), shared
// by the CPU and CUDA kernels. The rules are those of fastmtl/ops/_yolo_anchor_reference.py
// (mode "v3"), which the tests hold the kernels to (box term "mse", or "ciou" as below):
//
// preds[l][n, a, j, i, :] = (x, y, w, h, obj, class_0 .. class_{C-1}) logits of anchor a at cell
// (row j, column i) of scale l; targets[n, k] = (class, cx, cy, w, h) image fractions, the first
// counts[n] real. Each real target goes to the anchor, over all scales, whose shape fits it best
// (IoU of the two shapes, centred; ties: the lowest scale, then anchor), in the cell
// clamp(floor(c * size), 0, size - 1) of that scale; when several land on one (anchor, cell),
// the last in target order wins. An assigned prediction pays
//   box = (sig(x) - tx)^2 + (sig(y) - ty)^2 + (w - tw)^2 + (h - th)^2,
//         tx = cx W - i, tw = log(w W / prior_w)   (prior = anchor pixels / stride)
//   obj = BCE(obj, 1),   cls = sum_c BCE(class_c, [c == class]);
// any other pays noobj = BCE(obj, 0), unless its decoded box (i + sig(x), j + sig(y),
// prior_w exp(w), prior_h exp(h)) overlaps a real target of its image with IoU > ignore_threshold.
// Each prediction value feeds one term (box; obj or noobj; cls), so the backward scales the
// saved gradient by the incoming gradient of that term. The saved gradient is compact: the
// objectness value of every prediction, and whole rows only for the assigned ones (at most one
// per target); the rest of the gradient is zero.

#include <cmath>
#include <cstdint>

#include "box_math.h"
#include "hd.h"

namespace fastmtl {
namespace yolo3 {

using std::exp;
using std::floor;
using std::log;

enum Term : int { kBox = 0, kObj = 1, kNoObj = 2, kCls = 3, kTerms = 4 };

constexpr int kMaxLevels = 8;  // scales of one loss (YOLOv3 has 3, yolov5's P3-P7 5)

// Where a target goes: scale, anchor and cell; level < 0 for none.
struct GtCell {
  int level, anchor, gi, gj;
};

// The shapes of the scales: grids, anchors in pixels [L, A, 2] and strides.
template <typename T>
struct Scales {
  int levels, anchors;
  int grid_h[kMaxLevels], grid_w[kMaxLevels];
  T stride[kMaxLevels];
  const T* anchor_px;  // [levels * anchors * 2]
};

template <typename T>
FASTMTL_HD T lesser(T a, T b) { return b < a ? b : a; }
template <typename T>
FASTMTL_HD T greater(T a, T b) { return b > a ? b : a; }

// floor(v) clamped into [0, size - 1] (v = c * size).
template <typename T>
FASTMTL_HD int clamp_cell(T v, int size) {
  const T c = floor(v);
  return !(c > T(0)) ? 0 : (c >= static_cast<T>(size - 1) ? size - 1 : static_cast<int>(c));
}

// The IoU of two shapes centred on one point, as the IoU of (-w/2, -h/2, w/2, h/2) boxes.
template <typename T>
FASTMTL_HD T shape_iou(T w1, T h1, T w2, T h2) {
  const T inter = lesser(w1, w2) * lesser(h1, h2);
  return inter / (w1 * h1 + w2 * h2 - inter);
}

// The scale, anchor and cell of target t = (class, cx, cy, w, h).
template <typename T>
FASTMTL_HD GtCell assign(const T* t, const Scales<T>& s) {
  // the image in pixels: the first scale's grid times its stride
  const T gw = t[3] * (static_cast<T>(s.grid_w[0]) * s.stride[0]);
  const T gh = t[4] * (static_cast<T>(s.grid_h[0]) * s.stride[0]);
  GtCell best{-1, 0, 0, 0};
  T best_iou = T(0);
  for (int l = 0; l < s.levels; ++l) {
    for (int a = 0; a < s.anchors; ++a) {
      const T* p = s.anchor_px + 2 * (l * s.anchors + a);
      const T iou = shape_iou(gw, gh, p[0], p[1]);
      if (best.level < 0 || iou > best_iou) {
        best_iou = iou;
        best.level = l;
        best.anchor = a;
      }
    }
  }
  best.gi = clamp_cell(t[1] * static_cast<T>(s.grid_w[best.level]), s.grid_w[best.level]);
  best.gj = clamp_cell(t[2] * static_cast<T>(s.grid_h[best.level]), s.grid_h[best.level]);
  return best;
}

template <typename T>
FASTMTL_HD T sigmoid(T x) { return T(1) / (T(1) + exp(-x)); }

// BCE with logits, as torch computes it: (1 - t) x + m + log(exp(-m) + exp(-x - m)), m = max(-x, 0).
template <typename T>
FASTMTL_HD T bce(T x, T t) {
  const T m = greater(-x, T(0));
  return (T(1) - t) * x + m + log(exp(-m) + exp(-x - m));
}

// IoU of two (x1, y1, x2, y2) boxes, as the reference's pairwise IoU (no epsilon).
template <typename T>
FASTMTL_HD T box_iou(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T iw = greater(lesser(ax2, bx2) - greater(ax1, bx1), T(0));
  const T ih = greater(lesser(ay2, by2) - greater(ay1, by1), T(0));
  const T inter = iw * ih;
  return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter);
}

// One scale's view of a prediction: where it is and its prior, in cells of its scale.
template <typename T>
struct Slot {
  int level, anchor, gi, gj, grid_w, grid_h;
  T prior_w, prior_h;
};

// The slot of prediction (anchor a, row j, column i) of scale l.
template <typename T>
FASTMTL_HD Slot<T> slot_of(const Scales<T>& s, int l, int a, int j, int i) {
  const T* px = s.anchor_px + 2 * (l * s.anchors + a);
  return {l, a, i, j, s.grid_w[l], s.grid_h[l], px[0] / s.stride[l], px[1] / s.stride[l]};
}

// Whether the decoded box of prediction p overlaps a real target (rows of 5) with IoU > thr.
template <typename T, typename S>
FASTMTL_HD bool ignored(const S* p, const Slot<T>& q, const T* targets, int64_t count, T thr) {
  const T cx = static_cast<T>(q.gi) + sigmoid(static_cast<T>(p[0]));
  const T cy = static_cast<T>(q.gj) + sigmoid(static_cast<T>(p[1]));
  const T w = q.prior_w * exp(static_cast<T>(p[2])), h = q.prior_h * exp(static_cast<T>(p[3]));
  const T x1 = cx - w / T(2), y1 = cy - h / T(2), x2 = cx + w / T(2), y2 = cy + h / T(2);
  const T sw = static_cast<T>(q.grid_w), sh = static_cast<T>(q.grid_h);
  for (int64_t k = 0; k < count; ++k) {
    const T* t = targets + 5 * k;
    const T gx = t[1] * sw, gy = t[2] * sh, gw = t[3] * sw, gh = t[4] * sh;
    if (box_iou(x1, y1, x2, y2, gx - gw / T(2), gy - gh / T(2), gx + gw / T(2), gy + gh / T(2)) > thr) return true;
  }
  return false;
}

// CIoU of box a against box b, both (cx, cy, w, h), with yolov5's eps (1e-7) in the union, the
// diagonal and alpha (alpha a constant in the gradient); with grad, d(1 - CIoU)/d(a) in grad[4].
template <typename T>
FASTMTL_HD T ciou_cxcywh(const T* a, const T* b, T* grad) {
  const T eps = T(1e-7);
  const box::Box<T> ba{a[0] - a[2] / T(2), a[1] - a[3] / T(2), a[0] + a[2] / T(2), a[1] + a[3] / T(2)};
  const box::Box<T> bb{b[0] - b[2] / T(2), b[1] - b[3] / T(2), b[0] + b[2] / T(2), b[1] + b[3] / T(2)};
  const box::BoxGeom<T> ga = box::box_geom<box::kCIoU>(ba), gb = box::box_geom<box::kCIoU>(bb);
  if (grad) {
    box::Box<T> da, db;
    box::pair_grad<box::kCIoU>(ga, gb, T(-1), eps, eps, da, db);
    grad[0] = da.x1 + da.x2;
    grad[1] = da.y1 + da.y2;
    grad[2] = (da.x2 - da.x1) / T(2);
    grad[3] = (da.y2 - da.y1) / T(2);
  }
  return box::pair_value<box::kCIoU>(ga, gb, eps, eps);
}

// sum_c BCE(x_c, [c == label]) over the class logits x (sigmoid, multi-label), and its gradient
// sigmoid(x_c) - [c == label] in grad when not null.
template <typename T, typename S>
FASTMTL_HD T class_terms(const S* x, int classes, int label, S* grad) {
  T sum = T(0);
  for (int c = 0; c < classes; ++c) {
    const T v = static_cast<T>(x[c]), t = c == label ? T(1) : T(0);
    sum += bce(v, t);
    if (grad) grad[c] = static_cast<S>(sigmoid(v) - t);
  }
  return sum;
}

// The box term of an assigned prediction p against its target (in cells of its scale), added to
// *term, with its gradient in row[0..3] when row is not null. "mse": squared errors of the
// sigmoid offsets and the log sizes; "ciou": 1 - CIoU of the decoded box (q.gi + sig(x), q.gj +
// sig(y), prior_w exp(w), prior_h exp(h)).
template <typename T, typename S>
FASTMTL_HD void box_term(const S* p, const Slot<T>& q, const T* owner, bool ciou, T* term, S* row) {
  const T sw = static_cast<T>(q.grid_w), sh = static_cast<T>(q.grid_h);
  const T v[4] = {static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2]), static_cast<T>(p[3])};
  const T sx = sigmoid(v[0]), sy = sigmoid(v[1]);
  if (ciou) {
    const T ew = q.prior_w * exp(v[2]), eh = q.prior_h * exp(v[3]);
    const T decoded[4] = {static_cast<T>(q.gi) + sx, static_cast<T>(q.gj) + sy, ew, eh};
    const T gt[4] = {owner[1] * sw, owner[2] * sh, owner[3] * sw, owner[4] * sh};
    T g[4];
    *term += T(1) - ciou_cxcywh(decoded, gt, row ? g : nullptr);
    if (row) {
      const T chain[4] = {sx * (T(1) - sx), sy * (T(1) - sy), ew, eh};
      for (int k = 0; k < 4; ++k) row[k] = static_cast<S>(g[k] * chain[k]);
    }
    return;
  }
  const T target[4] = {owner[1] * sw - static_cast<T>(q.gi), owner[2] * sh - static_cast<T>(q.gj),
                       log(owner[3] * sw / q.prior_w), log(owner[4] * sh / q.prior_h)};
  for (int k = 0; k < 4; ++k) {
    const T s = k == 0 ? sx : (k == 1 ? sy : v[k]);
    const T d = s - target[k];
    *term += d * d;
    if (row) row[k] = static_cast<S>(T(2) * d * (k < 2 ? s * (T(1) - s) : T(1)));
  }
}

// The terms of prediction p (5 + classes values), added to terms[kTerms], and their gradient,
// kept compact (when obj_grad is not null): the objectness gradient of every prediction in
// *obj_grad, and the whole row only for an assigned one, in row (5 + classes values; the rest of
// an unassigned prediction's gradient is 0). owner: its target row, or null. Returns whether the
// prediction is assigned.
template <typename T, typename S>
FASTMTL_HD bool prediction_loss(const S* p, int classes, const Slot<T>& q, const T* owner, bool skip_noobj,
                                bool ciou, T* terms, S* obj_grad, S* row) {
  const T obj = static_cast<T>(p[4]);
  if (!owner) {
    if (!skip_noobj) terms[kNoObj] += bce(obj, T(0));
    if (obj_grad) *obj_grad = skip_noobj ? S(0) : static_cast<S>(sigmoid(obj));
    return false;
  }
  box_term(p, q, owner, ciou, terms + kBox, row);
  terms[kObj] += bce(obj, T(1));
  if (obj_grad) *obj_grad = static_cast<S>(sigmoid(obj) - T(1));
  if (row) row[4] = static_cast<S>(sigmoid(obj) - T(1));
  terms[kCls] += class_terms<T>(p + 5, classes, static_cast<int>(owner[0]), row ? row + 5 : nullptr);
  return true;
}

// The last real target assigned to slot q, or -1.
FASTMTL_HD int64_t slot_owner(const GtCell* cells, int64_t count, int level, int anchor, int gi, int gj) {
  for (int64_t k = count - 1; k >= 0; --k) {
    const GtCell& c = cells[k];
    if (c.level == level && c.anchor == anchor && c.gi == gi && c.gj == gj) return k;
  }
  return -1;
}

}  // namespace yolo3
}  // namespace fastmtl
