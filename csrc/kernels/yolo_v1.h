#pragma once
// Torch-free math of the fused YOLOv1 loss (Redmon et al. 2016), shared by the CPU and CUDA
// kernels so that the CPU tests exercise the arithmetic the GPU runs. The rules are listed in
// fastmtl/ops/yolo_v1.py; in short:
//
// pred[n, i, j, :] of cell row i (y), column j (x) holds B boxes of (x, y, w, h, conf) then C class
// scores. x, y are offsets in the cell; w, h are image fractions, output as their square roots
// (WhMode kSqrt, Darknet) or as w, h put through sign(w) * sqrt(|w| + eps) (kSignedSqrt).
// targets[n, k] = (class, cx, cy, w, h), normalized to the image; the first counts[n] are real.
// An object belongs to the cell floor(c * S) (clamped to the grid) of its centre; when several
// fall in one cell, the first in target order is the cell's object and the rest are ignored. The
// responsible predictor has the highest IoU with it (ties: lowest index); when every IoU is 0,
// the one with the smallest squared distance (cx, cy, w, h) to it (Darknet's rule).
//
// Per cell, with r the responsible predictor (lc = lambda_coord, ln = lambda_noobj):
//   coord = lc [(x_r - x^)^2 + (y_r - y^)^2]         size = lc [(s(w_r) - sqrt(w^))^2 + (s(h_r) - sqrt(h^))^2]
//   obj   = (conf_r - t)^2, t = IoU_r (held constant) or 1
//   noobj = ln * sum over the other predictors (all B in a cell without object) of conf^2
//   class = sum_c (p_c - [c == class])^2               (cells with an object only)
// and their gradients in the same pass: every prediction value feeds exactly one term, which is
// how the backward scales the saved gradient by the incoming one (term_of below).

#include <cmath>
#include <cstdint>

#include "hd.h"

namespace fastmtl {
namespace yolo {

using std::floor;
using std::sqrt;

enum WhMode : int { kSqrt = 0, kSignedSqrt = 1 };
enum ConfTarget : int { kConfIoU = 0, kConfOne = 1 };
enum Term : int { kCoord = 0, kSize = 1, kObj = 2, kNoObj = 3, kClass = 4, kTerms = 5 };

// The epsilon of kSignedSqrt: s(w) = sign(w) sqrt(|w| + eps), finite slope at 0.
constexpr double kSqrtEps = 1e-6;

template <typename T>
struct Params {
  int grid_h, grid_w, boxes, classes;
  T lambda_coord, lambda_noobj;
  WhMode wh;
  ConfTarget conf;
  FASTMTL_HD int values() const { return 5 * boxes + classes; }  // per cell
};

// floor(v * size) clamped into [0, size - 1]: v = 1 lands in the last cell; NaN in the first.
template <typename T>
FASTMTL_HD int cell_of(T v, int size) {
  const T c = floor(v * static_cast<T>(size));
  return !(c > T(0)) ? 0 : (c >= static_cast<T>(size - 1) ? size - 1 : static_cast<int>(c));
}

// The class index of a target row, or -1 when it names no class in [0, classes).
template <typename T>
FASTMTL_HD int class_of(T v, int classes) {
  return v >= T(0) && v < static_cast<T>(classes) ? static_cast<int>(v) : -1;
}

// The first of the `count` targets (rows of 5) whose centre lies in cell (i, j), or -1.
template <typename T>
FASTMTL_HD int64_t cell_object(const T* targets, int64_t count, int i, int j, int grid_h, int grid_w) {
  for (int64_t k = 0; k < count; ++k) {
    const T* t = targets + 5 * k;
    if (cell_of(t[2], grid_h) == i && cell_of(t[1], grid_w) == j) return k;
  }
  return -1;
}

// The size a raw output stands for (the box of the IoU): w^2, or max(w, 0).
template <typename T>
FASTMTL_HD T box_size(T raw, WhMode wh) {
  return wh == kSqrt ? raw * raw : (raw > T(0) ? raw : T(0));
}

// s(w) of the size term and its derivative.
template <typename T>
FASTMTL_HD T size_root(T raw, WhMode wh, T& slope) {
  if (wh == kSqrt) {
    slope = T(1);
    return raw;
  }
  const T r = sqrt((raw < T(0) ? -raw : raw) + static_cast<T>(kSqrtEps));
  const T sign = raw > T(0) ? T(1) : (raw < T(0) ? T(-1) : T(0));
  slope = sign * sign / (T(2) * r);  // 0 at raw == 0, as autograd's derivative of sign(w) * r
  return sign * r;
}

template <typename T>
FASTMTL_HD T lesser(T a, T b) { return b < a ? b : a; }
template <typename T>
FASTMTL_HD T greater(T a, T b) { return b > a ? b : a; }

// IoU of two (cx, cy, w, h) boxes with sizes >= 0; 0 when the union is empty.
template <typename T>
FASTMTL_HD T center_iou(T ax, T ay, T aw, T ah, T bx, T by, T bw, T bh) {
  const T iw = lesser(ax + aw / T(2), bx + bw / T(2)) - greater(ax - aw / T(2), bx - bw / T(2));
  const T ih = lesser(ay + ah / T(2), by + bh / T(2)) - greater(ay - ah / T(2), by - bh / T(2));
  const T inter = (iw > T(0) ? iw : T(0)) * (ih > T(0) ? ih : T(0));
  const T uni = aw * ah + bw * bh - inter;
  return uni > T(0) ? inter / uni : T(0);
}

// The decoded box of predictor b of cell (i, j), in image fractions.
template <typename T>
struct PredBox {
  T cx, cy, w, h;
};

template <typename T, typename S>
FASTMTL_HD PredBox<T> pred_box(const S* p, int b, int i, int j, const Params<T>& q) {
  const S* v = p + 5 * b;
  return {(static_cast<T>(j) + static_cast<T>(v[0])) / static_cast<T>(q.grid_w),
          (static_cast<T>(i) + static_cast<T>(v[1])) / static_cast<T>(q.grid_h), box_size(static_cast<T>(v[2]), q.wh),
          box_size(static_cast<T>(v[3]), q.wh)};
}

// The responsible predictor for object t = (class, cx, cy, w, h) and its IoU.
template <typename T, typename S>
FASTMTL_HD int responsible(const S* p, const T* t, int i, int j, const Params<T>& q, T& best_iou) {
  int best = -1;
  best_iou = T(0);
  for (int b = 0; b < q.boxes; ++b) {
    const PredBox<T> a = pred_box(p, b, i, j, q);
    const T iou = center_iou(a.cx, a.cy, a.w, a.h, t[1], t[2], t[3], t[4]);
    if (iou > best_iou) {
      best_iou = iou;
      best = b;
    }
  }
  if (best >= 0) return best;
  // Every IoU is 0 (or NaN): the nearest box, as Darknet; predictor 0 when every distance is NaN.
  best = 0;
  bool found = false;
  T best_d = T(0);
  for (int b = 0; b < q.boxes; ++b) {
    const PredBox<T> a = pred_box(p, b, i, j, q);
    const T dx = a.cx - t[1], dy = a.cy - t[2], dw = a.w - t[3], dh = a.h - t[4];
    const T d = dx * dx + dy * dy + dw * dw + dh * dh;
    if (d == d && (!found || d < best_d)) {
      best = b;
      best_d = d;
      found = true;
    }
  }
  return best;
}

// The loss terms of one cell, added to terms[kTerms], and (when grad is not null) the gradient of
// each of its values, written to grad[0 .. 5B + C). object: the cell's target row or null.
// Returns the responsible predictor, or -1 for a cell without object.
template <typename T, typename S>
FASTMTL_HD int cell_loss(const S* p, const T* object, int i, int j, const Params<T>& q, T* terms, S* grad) {
  T iou = T(0);
  const int r = object ? responsible(p, object, i, j, q, iou) : -1;
  for (int b = 0; b < q.boxes; ++b) {
    const S* v = p + 5 * b;
    S* g = grad ? grad + 5 * b : nullptr;
    const T conf = static_cast<T>(v[4]);
    if (b != r) {
      terms[kNoObj] += q.lambda_noobj * conf * conf;
      if (g) {
        for (int k = 0; k < 4; ++k) g[k] = S(0);
        g[4] = static_cast<S>(T(2) * q.lambda_noobj * conf);
      }
      continue;
    }
    const T dx = static_cast<T>(v[0]) - (object[1] * static_cast<T>(q.grid_w) - static_cast<T>(j));
    const T dy = static_cast<T>(v[1]) - (object[2] * static_cast<T>(q.grid_h) - static_cast<T>(i));
    T slope_w, slope_h;
    const T dw = size_root(static_cast<T>(v[2]), q.wh, slope_w) - sqrt(object[3]);
    const T dh = size_root(static_cast<T>(v[3]), q.wh, slope_h) - sqrt(object[4]);
    const T dc = conf - (q.conf == kConfIoU ? iou : T(1));
    terms[kCoord] += q.lambda_coord * (dx * dx + dy * dy);
    terms[kSize] += q.lambda_coord * (dw * dw + dh * dh);
    terms[kObj] += dc * dc;
    if (g) {
      g[0] = static_cast<S>(T(2) * q.lambda_coord * dx);
      g[1] = static_cast<S>(T(2) * q.lambda_coord * dy);
      g[2] = static_cast<S>(T(2) * q.lambda_coord * dw * slope_w);
      g[3] = static_cast<S>(T(2) * q.lambda_coord * dh * slope_h);
      g[4] = static_cast<S>(T(2) * dc);
    }
  }
  const S* cls = p + 5 * q.boxes;
  S* gc = grad ? grad + 5 * q.boxes : nullptr;
  const int label = object ? class_of(object[0], q.classes) : -1;
  for (int c = 0; c < q.classes; ++c) {
    const T d = object ? static_cast<T>(cls[c]) - (c == label ? T(1) : T(0)) : T(0);
    terms[kClass] += d * d;
    if (gc) gc[c] = static_cast<S>(T(2) * d);
  }
  return r;
}

// The term that value e of a cell feeds, r being the cell's responsible predictor (-1: none).
FASTMTL_HD int term_of(int64_t e, int boxes, int r) {
  if (e >= 5 * static_cast<int64_t>(boxes)) return kClass;
  const int k = static_cast<int>(e % 5);
  if (k < 2) return kCoord;
  if (k < 4) return kSize;
  return static_cast<int>(e / 5) == r ? kObj : kNoObj;
}

}  // namespace yolo
}  // namespace fastmtl
