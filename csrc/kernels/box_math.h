#pragma once
// Torch-free per-pair box math, shared verbatim by the CPU and CUDA kernels so that
// the CPU tests exercise the arithmetic the GPU runs.
//
// Boxes are corners (x1, y1, x2, y2). For a pair (a, b):
//   inter = max(0, min(a.x2,b.x2) - max(a.x1,b.x1)) * max(0, min(a.y2,b.y2) - max(a.y1,b.y1))
//   iou   = inter / (area(a) + area(b) - inter + union_eps)
//   giou  = iou - (C - union) / (C + union_eps),        C = area of the enclosing box
//   diou  = iou - rho^2 / (cw^2 + ch^2 + eps),          rho = distance between centres
//   ciou  = diou - alpha * v,  v = 4/pi^2 (atan(wa/ha) - atan(wb/hb))^2,
//           alpha = v / (1 - iou + v + eps), held constant in the gradient (as torchvision does).
// torchvision's pairwise ops use union_eps = 0; its *_box_iou_loss functions use union_eps = eps.
// Everything is computed in the accumulation type T (float for half/bfloat16 inputs).

#include <cmath>
#include <type_traits>

#include "hd.h"

namespace fastmtl {
namespace box {

enum Variant : int { kIoU = 0, kGIoU = 1, kDIoU = 2, kCIoU = 3 };

template <typename T>
struct Box {
  T x1, y1, x2, y2;
};

template <typename T, typename S>
FASTMTL_HD Box<T> load_box(const S* p) {
  return {static_cast<T>(p[0]), static_cast<T>(p[1]), static_cast<T>(p[2]), static_cast<T>(p[3])};
}

// Ternaries, not fmin/fmax: they vectorize on the CPU and inputs are checked finite.
template <typename T>
FASTMTL_HD T max2(T a, T b) { return a > b ? a : b; }
template <typename T>
FASTMTL_HD T min2(T a, T b) { return a < b ? a : b; }

template <typename T>
FASTMTL_HD T area(const Box<T>& b) { return (b.x2 - b.x1) * (b.y2 - b.y1); }

// float arctangent written with selects only, so CPU loops that call it still vectorize
// (libm's atanf is a scalar call). Range reduction to |x| <= tan(pi/8) with the offsets
// pi/2 and pi/4, then an odd polynomial; max error about 2 ulp, inf -> pi/2, NaN -> NaN.
FASTMTL_HD float atan_(float x) {
  const float ax = x < 0.f ? -x : x;
  const bool big = ax > 2.414213562f, mid = ax > 0.414213562f;
  const float r = big ? -1.f / ax : (mid ? (ax - 1.f) / (ax + 1.f) : ax);
  const float base = big ? 1.570796327f : (mid ? 0.785398163f : 0.f);
  const float z = r * r;
  const float p = (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z -
                   3.33329491539e-1f) * z * r + r;
  const float y = base + p;
  return x < 0.f ? -y : y;
}
FASTMTL_HD double atan_(double x) { return atan(x); }

template <typename T>
FASTMTL_HD T ciou_k() { return T(0.40528473456935108578); }  // 4 / pi^2

// atan(w / h): the CIoU shape term of a box.
template <typename T>
FASTMTL_HD T box_aspect(const Box<T>& b) { return atan_((b.x2 - b.x1) / (b.y2 - b.y1)); }

// Per-box values that the pairwise kernels compute once per box, not once per pair.
template <typename T>
struct BoxStats {
  T area;
  T aspect;  // atan(w / h), the CIoU shape term
};

template <typename T>
FASTMTL_HD BoxStats<T> box_stats(const Box<T>& b) {
  return {area(b), box_aspect(b)};
}

// Everything the pair math reads of one box: the corners and the values derived from them alone.
// Each field is the very expression the pair functions used to evaluate inline for every pair, so
// a kernel that computes a BoxGeom once per box (in registers, shared memory or a buffer) gets the
// same bits as one that recomputes it per pair; builds keep FMA contraction off (-ffp-contract=off,
// -fmad=false), so this holds on both devices.
template <typename T>
struct BoxGeom {
  Box<T> b;
  T w, h;    // x2 - x1, y2 - y1
  T cx, cy;  // (x1 + x2) / 2, (y1 + y2) / 2
  T area;    // (x2 - x1) * (y2 - y1)
  T aspect;  // box_aspect (only read by CIoU)
  T r2;      // w * w + h * h (only read by the CIoU gradient)
};

// A BoxGeom from the box and its area and aspect, computed elsewhere (BoxStats, a buffer).
template <typename T>
FASTMTL_HD BoxGeom<T> box_geom(const Box<T>& b, T area_, T aspect) {
  BoxGeom<T> g;
  g.b = b;
  g.w = b.x2 - b.x1;
  g.h = b.y2 - b.y1;
  g.cx = (b.x1 + b.x2) / T(2);
  g.cy = (b.y1 + b.y2) / T(2);
  g.area = area_;
  g.aspect = aspect;
  g.r2 = g.w * g.w + g.h * g.h;
  return g;
}

// A BoxGeom for variant V: the arctangent only where V reads it (CIoU).
template <int V, typename T>
FASTMTL_HD BoxGeom<T> box_geom(const Box<T>& b) {
  return box_geom(b, area(b), V == kCIoU ? box_aspect(b) : T(0));
}

// Value of variant V for one pair. Unused fields (the aspect outside CIoU) cost nothing once
// inlined. There are no reciprocals to precompute: every divisor left (the union, the enclosing
// box, the diagonal, 1 - iou + v) depends on the pair, and x / d is not x * (1 / d) in floating
// point, so a reciprocal would break the CPU/GPU bit-identity.
template <int V, typename T>
FASTMTL_HD T pair_value(const BoxGeom<T>& ga, const BoxGeom<T>& gb, T eps, T union_eps) {
  const Box<T>& a = ga.b;
  const Box<T>& b = gb.b;
  const T iw = max2(min2(a.x2, b.x2) - max2(a.x1, b.x1), T(0));
  const T ih = max2(min2(a.y2, b.y2) - max2(a.y1, b.y1), T(0));
  const T inter = iw * ih;
  const T uni = ga.area + gb.area - inter;
  const T iou = inter / (uni + union_eps);
  if constexpr (V == kIoU) return iou;
  const T cw = max2(max2(a.x2, b.x2) - min2(a.x1, b.x1), T(0));
  const T ch = max2(max2(a.y2, b.y2) - min2(a.y1, b.y1), T(0));
  if constexpr (V == kGIoU) {
    const T c = cw * ch;
    return iou - (c - uni) / (c + union_eps);
  }
  const T dx = ga.cx - gb.cx;
  const T dy = ga.cy - gb.cy;
  const T diou = iou - (dx * dx + dy * dy) / (cw * cw + ch * ch + eps);
  if constexpr (V == kDIoU) return diou;
  const T t = ga.aspect - gb.aspect;
  const T v = ciou_k<T>() * t * t;
  const T alpha = v / (T(1) - iou + v + eps);
  return diou - alpha * v;
}

template <int V, typename T>
FASTMTL_HD T pair_value(const Box<T>& a, const Box<T>& b, const BoxStats<T>& sa, const BoxStats<T>& sb,
                        T eps, T union_eps) {
  return pair_value<V>(box_geom(a, sa.area, sa.aspect), box_geom(b, sb.area, sb.aspect), eps, union_eps);
}

template <int V, typename T>
FASTMTL_HD T pair_value(const Box<T>& a, const Box<T>& b, T eps, T union_eps) {
  return pair_value<V>(box_geom<V>(a), box_geom<V>(b), eps, union_eps);
}

// Gradient of y = min(p, q) (sign = +1) or max(p, q) (sign = -1) split as torch does:
// all to the winner, half each on a tie.
template <typename T>
FASTMTL_HD void minmax_grad(T p, T q, T g, bool is_min, T& gp, T& gq) {
  const T wp = p == q ? T(0.5) : ((p < q) == is_min ? T(1) : T(0));
  gp += g * wp;
  gq += g * (T(1) - wp);
}

// d(variant V of the pair)/d(coordinates) times the incoming gradient g, written into ga, gb.
// Recomputes the forward intermediates: backward needs only the boxes.
template <int V, typename T>
FASTMTL_HD void pair_grad(const BoxGeom<T>& sa, const BoxGeom<T>& sb, T g, T eps, T union_eps, Box<T>& ga,
                          Box<T>& gb) {
  const Box<T>& a = sa.b;
  const Box<T>& b = sb.b;
  ga = {T(0), T(0), T(0), T(0)};
  gb = {T(0), T(0), T(0), T(0)};
  const T wa = sa.w, ha = sa.h, wb = sb.w, hb = sb.h;
  const T iw_raw = min2(a.x2, b.x2) - max2(a.x1, b.x1);
  const T ih_raw = min2(a.y2, b.y2) - max2(a.y1, b.y1);
  const T iw = max2(iw_raw, T(0)), ih = max2(ih_raw, T(0));
  const T inter = iw * ih;
  const T uni = sa.area + sb.area - inter;
  const T ud = uni + union_eps;
  const T iou = inter / ud;
  const T cw_raw = max2(a.x2, b.x2) - min2(a.x1, b.x1);
  const T ch_raw = max2(a.y2, b.y2) - min2(a.y1, b.y1);
  const T cw = max2(cw_raw, T(0)), ch = max2(ch_raw, T(0));

  T g_uni = T(0), g_cw = T(0), g_ch = T(0), g_wa = T(0), g_ha = T(0), g_wb = T(0), g_hb = T(0);
  if constexpr (V == kGIoU) {
    const T cd = cw * ch + union_eps;
    const T g_c = -g * (union_eps + uni) / (cd * cd);
    g_uni += g / cd;
    g_cw += g_c * ch;
    g_ch += g_c * cw;
  }
  if constexpr (V == kDIoU || V == kCIoU) {
    const T dx = sa.cx - sb.cx;
    const T dy = sa.cy - sb.cy;
    const T diag = cw * cw + ch * ch + eps;
    const T rho2 = dx * dx + dy * dy;
    const T g_diag = g * rho2 / (diag * diag);
    g_cw += g_diag * T(2) * cw;
    g_ch += g_diag * T(2) * ch;
    // d(rho2)/d(dx) = 2 dx and d(dx)/d(a.x1) = 1/2
    const T g_dx = -g * dx / diag, g_dy = -g * dy / diag;
    ga.x1 += g_dx; ga.x2 += g_dx; gb.x1 -= g_dx; gb.x2 -= g_dx;
    ga.y1 += g_dy; ga.y2 += g_dy; gb.y1 -= g_dy; gb.y2 -= g_dy;
  }
  if constexpr (V == kCIoU) {
    const T t = sa.aspect - sb.aspect;
    const T v = ciou_k<T>() * t * t;
    const T alpha = v / (T(1) - iou + v + eps);
    const T g_t = -g * alpha * T(2) * ciou_k<T>() * t;
    // g_t * ha / ra is (g_t * ha) / ra: a reciprocal of ra would round differently.
    const T ra = sa.r2, rb = sb.r2;
    g_wa += g_t * ha / ra;
    g_ha -= g_t * wa / ra;
    g_wb -= g_t * hb / rb;
    g_hb += g_t * wb / rb;
  }
  // iou = inter / (uni + union_eps), uni = area_a + area_b - inter
  g_uni -= g * iou / ud;
  const T g_inter = g / ud - g_uni;
  g_wa += g_uni * ha; g_ha += g_uni * wa;
  g_wb += g_uni * hb; g_hb += g_uni * wb;
  // inter = iw * ih, zero gradient where the boxes do not overlap
  const T g_overlap = (iw_raw > T(0)) & (ih_raw > T(0)) ? g_inter : T(0);
  const T g_iw = g_overlap * ih, g_ih = g_overlap * iw;
  minmax_grad(a.x2, b.x2, g_iw, true, ga.x2, gb.x2);
  minmax_grad(a.x1, b.x1, -g_iw, false, ga.x1, gb.x1);
  minmax_grad(a.y2, b.y2, g_ih, true, ga.y2, gb.y2);
  minmax_grad(a.y1, b.y1, -g_ih, false, ga.y1, gb.y1);
  // enclosing box (selects, not branches, so CPU loops over pairs vectorize)
  g_cw = cw_raw >= T(0) ? g_cw : T(0);
  g_ch = ch_raw >= T(0) ? g_ch : T(0);
  minmax_grad(a.x2, b.x2, g_cw, false, ga.x2, gb.x2);
  minmax_grad(a.x1, b.x1, -g_cw, true, ga.x1, gb.x1);
  minmax_grad(a.y2, b.y2, g_ch, false, ga.y2, gb.y2);
  minmax_grad(a.y1, b.y1, -g_ch, true, ga.y1, gb.y1);
  // widths and heights
  ga.x2 += g_wa; ga.x1 -= g_wa; ga.y2 += g_ha; ga.y1 -= g_ha;
  gb.x2 += g_wb; gb.x1 -= g_wb; gb.y2 += g_hb; gb.y1 -= g_hb;
}

template <int V, typename T>
FASTMTL_HD void pair_grad(const Box<T>& a, const Box<T>& b, const BoxStats<T>& sa, const BoxStats<T>& sb,
                          T g, T eps, T union_eps, Box<T>& ga, Box<T>& gb) {
  pair_grad<V>(box_geom(a, sa.area, sa.aspect), box_geom(b, sb.area, sb.aspect), g, eps, union_eps, ga, gb);
}

template <int V, typename T>
FASTMTL_HD void pair_grad(const Box<T>& a, const Box<T>& b, T g, T eps, T union_eps, Box<T>& ga, Box<T>& gb) {
  pair_grad<V>(box_geom<V>(a), box_geom<V>(b), g, eps, union_eps, ga, gb);
}

// Calls f(std::integral_constant<int, V>{}) with V the variant as a compile-time constant,
// keeping the variant switch out of the inner loops. Host side only.
template <typename F>
inline void dispatch_variant(int variant, F&& f) {
  switch (variant) {
    case kIoU: f(std::integral_constant<int, kIoU>{}); break;
    case kGIoU: f(std::integral_constant<int, kGIoU>{}); break;
    case kDIoU: f(std::integral_constant<int, kDIoU>{}); break;
    default: f(std::integral_constant<int, kCIoU>{}); break;
  }
}

}  // namespace box
}  // namespace fastmtl
