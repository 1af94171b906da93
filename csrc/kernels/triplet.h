#pragma once
// Torch-free math of the fused batch triplet loss with online mining, shared by the CPU and CUDA
// kernels. The rules are those of fastmtl/ops/_triplet_reference.py, which the tests hold the
// kernels to. Every metric is a distance d (smaller is closer; cosine: d = -similarity); anchor
// a's loss depends on its row d(a, .) only, so one pass over a row gives the anchor's loss, its
// statistics and w(a, j) = d loss_a / d d(a, j), then folded with d d / d (the metric's own
// variable: the distance, its square or the similarity) for the backward's matrix products.

#include <cmath>
#include <cstdint>

#include "hd.h"

namespace fastmtl {
namespace triplet {

using std::sqrt;

enum Mining : int { kAll = 0, kHard = 1, kSemihard = 2, kSemihardAll = 3 };
enum Metric : int { kEuclidean = 0, kSquared = 1, kCosine = 2 };
enum Stat : int { kActive = 0, kMined = 1, kPosSum = 2, kNegSum = 3, kStats = 4 };

// Squared distance of rows i and j from the Gram matrix: |x_i|^2 + |x_j|^2 - 2 x_i.x_j, clamped
// at 0. Where that is under 1/64 of |x_i|^2 + |x_j|^2 the subtraction has cancelled most digits
// (a few ulps of the norms become the whole distance, and 1/d blows up in the gradient), so the
// sum of squared differences is taken from the rows themselves: exactly 0 for equal rows.
template <typename T>
FASTMTL_HD T gram_squared(T norm_i, T norm_j, T gram) {
  return norm_i + norm_j - T(2) * gram;
}

template <typename T>
FASTMTL_HD bool cancelled(T fast, T norm_i, T norm_j) {
  return !(fast > (norm_i + norm_j) / T(64));
}

template <typename T>
FASTMTL_HD T exact_squared(const T* xi, const T* xj, int64_t dim) {
  T exact = T(0);
  for (int64_t k = 0; k < dim; ++k) {
    const T diff = xi[k] - xj[k];
    exact += diff * diff;
  }
  return exact;
}

template <typename T>
FASTMTL_HD T squared_distance(const T* xi, const T* xj, int64_t dim, T norm_i, T norm_j, T gram) {
  const T fast = gram_squared(norm_i, norm_j, gram);
  return cancelled(fast, norm_i, norm_j) ? exact_squared(xi, xj, dim) : fast;
}

// The distance from the squared one (cosine: the negated similarity, the Gram value itself).
template <typename T>
FASTMTL_HD T finish_distance(int metric, T v) {
  if (metric == kCosine) return -v;
  return metric == kSquared ? v : sqrt(v);
}

// The distance of a pair, from the Gram value (cosine: of the normalized rows; norms unused).
template <typename T>
FASTMTL_HD T pair_distance(int metric, const T* xi, const T* xj, int64_t dim, T norm_i, T norm_j, T gram) {
  if (metric == kCosine) return finish_distance(metric, gram);
  return finish_distance(metric, squared_distance(xi, xj, dim, norm_i, norm_j, gram));
}

// The statistics of one mined triplet (a, p, n) and its loss d(a, p) - d(a, n) + margin when > 0.
template <typename T>
struct RowSums {
  double loss = 0, active = 0, mined = 0, pos = 0, neg = 0;

  // Anchor a's outputs: its loss and its statistics row.
  FASTMTL_HD void store(int64_t a, T* loss_out, double* stats) const {
    loss_out[a] = static_cast<T>(loss);
    double* row = stats + kStats * a;
    row[kActive] = active;
    row[kMined] = mined;
    row[kPosSum] = pos;
    row[kNegSum] = neg;
  }

  FASTMTL_HD bool add(T dap, T dan, T margin) {
    const T v = dap - dan + margin;
    mined += 1;
    pos += static_cast<double>(dap);
    neg += static_cast<double>(dan);
    if (!(v > T(0))) return false;
    loss += static_cast<double>(v);
    active += 1;
    return true;
  }
};

// A weight w = d loss / d distance folded with the metric's derivative: euclidean / d (0 where
// d = 0), squared x 2, cosine x -1 (a derivative in the similarity).
template <typename T>
FASTMTL_HD T fold(int metric, T w, T d) {
  if (metric == kEuclidean) return d > T(0) ? w / d : T(0);
  return metric == kSquared ? T(2) * w : -w;
}

// Batch-hard's choice in anchor a's row: the farthest positive p and the closest negative n (-1
// for none; ties: the first index).
template <typename T>
struct Hardest {
  int64_t p = -1, n = -1;
  T dp = T(0), dn = T(0);
};

// One pass with the best distances held in registers (comparing with d[p] reloaded from memory
// made every step wait for the previous one's load).
template <typename T, typename L>
FASTMTL_HD Hardest<T> hardest(const T* d, const L* labels, int64_t b, int64_t a) {
  const L la = labels[a];
  int64_t p = -1, n = -1;  // locals, not the struct's members: those went through the stack
  T dp = T(0), dn = T(0);
  for (int64_t j = 0; j < b; ++j) {
    const T dj = d[j];
    if (labels[j] == la) {
      if (j != a && (p < 0 || dj > dp)) {
        p = j;
        dp = dj;
      }
    } else if (n < 0 || dj < dn) {
      n = j;
      dn = dj;
    }
  }
  return {p, n, dp, dn};
}

// Batch-hard's compact output for one anchor: its positive and negative (-1 for none) and their
// folded weights (0 unless the triplet is active).
template <typename T>
struct HardPair {
  int64_t p = -1, n = -1;
  T wp = T(0), wn = T(0);
};

// Anchor a's batch-hard triplet from its distance row: the sums, and the pair in `out`.
template <typename T, typename L>
FASTMTL_HD RowSums<T> hard_row(const T* d, const L* labels, int64_t b, int64_t a, T margin, int metric,
                               HardPair<T>& out) {
  RowSums<T> s;
  const Hardest<T> h = hardest(d, labels, b, a);
  out = HardPair<T>{h.p, h.n, T(0), T(0)};
  if (h.p >= 0 && h.n >= 0 && s.add(h.dp, h.dn, margin)) {
    out.wp = fold(metric, T(1), h.dp);
    out.wn = fold(metric, T(-1), h.dn);
  }
  return s;
}

// Anchor a's row for the mining modes other than batch-hard (hard_row): d[b] its distances,
// labels[b]; writes w[b] = d loss_a / d d(a, j) folded with the metric (euclidean: / d, 0 where
// d = 0; squared: x 2; cosine: x -1, a derivative in the similarity), returns the sums. Ties: the
// first index. The band of semi-hard negatives is 0 < d(a, n) - d(a, p) <= margin.
template <typename T, typename L>
FASTMTL_HD RowSums<T> anchor_row(const T* d, const L* labels, int64_t b, int64_t a, T margin, int mining,
                                  int metric, T* w) {
  RowSums<T> s;
  const L la = labels[a];
  for (int64_t j = 0; j < b; ++j) w[j] = T(0);
  if (mining == kHard) {  // callers take hard_row; kept total for any caller
    HardPair<T> pair;
    s = hard_row(d, labels, b, a, margin, metric, pair);
    if (pair.wp != T(0)) w[pair.p] = pair.wp;
    if (pair.wn != T(0)) w[pair.n] = pair.wn;
    return s;
  } else {
    for (int64_t p = 0; p < b; ++p) {
      if (p == a || labels[p] != la) continue;
      const T dap = d[p];
      int64_t best = -1;  // semihard: the closest negative in the band
      T hits = T(0);
      for (int64_t n = 0; n < b; ++n) {
        if (labels[n] == la) continue;
        const T gap = d[n] - dap;
        const bool in_band = gap > T(0) && gap <= margin;
        if (mining == kSemihard) {
          if (in_band && (best < 0 || d[n] < d[best])) best = n;
          continue;
        }
        if (mining == kSemihardAll && !in_band) continue;
        if (s.add(dap, d[n], margin)) {
          hits += T(1);
          w[n] -= T(1);
        }
      }
      if (best >= 0 && s.add(dap, d[best], margin)) {
        hits += T(1);
        w[best] -= T(1);
      }
      w[p] += hits;
    }
  }
  for (int64_t j = 0; j < b; ++j) {  // most weights are 0: no division there
    if (w[j] != T(0)) w[j] = fold(metric, w[j], d[j]);
  }
  return s;
}

// ---- the classic form on explicit (anchor, positive, negative) rows: torch's
// F.triplet_margin_loss, d(x, y) = |x - y + eps|_p, loss = max(margin + d(a, p) - d(a, n), 0),
// with swap d(a, n) -> min(d(a, n), d(p, n)).

using std::abs;
using std::pow;

// |x + eps|_p of x = u - v over dim values, and its gradient with respect to u (written to g when
// not null): sign(x) |x|^(p-1) / d^(p-1), 0 where d = 0 (as torch.norm's backward).
template <typename T, typename S>
FASTMTL_HD T pnorm_diff(const S* u, const S* v, int64_t dim, T p, T eps, T* g) {
  T sum = T(0);
  for (int64_t k = 0; k < dim; ++k) {
    const T x = static_cast<T>(u[k]) - static_cast<T>(v[k]) + eps;
    sum += p == T(2) ? x * x : (p == T(1) ? abs(x) : pow(abs(x), p));
  }
  const T d = p == T(2) ? sqrt(sum) : (p == T(1) ? sum : pow(sum, T(1) / p));
  if (!g) return d;
  for (int64_t k = 0; k < dim; ++k) {
    const T x = static_cast<T>(u[k]) - static_cast<T>(v[k]) + eps;
    const T sign = x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0));
    if (!(d > T(0))) g[k] = T(0);
    else if (p == T(2)) g[k] = x / d;
    else if (p == T(1)) g[k] = sign;
    else g[k] = sign * pow(abs(x), p - T(1)) / pow(d, p - T(1));
  }
  return d;
}

// One row's loss; with ga, gp, gn (dim values each; null for none), its gradient with respect to
// the anchor, positive and negative rows (used as scratch on the way). The clamp passes the
// gradient at 0 and a tie of the swap's minimum splits it in halves, as autograd does for torch's
// formula.
template <typename T, typename S>
FASTMTL_HD T explicit_row(const S* a, const S* p, const S* n, int64_t dim, T margin, T pnorm, T eps, bool swap,
                          T* ga, T* gp, T* gn) {
  const bool grad = ga != nullptr;
  const T d_ap = pnorm_diff(a, p, dim, pnorm, eps, ga);  // u_ap in ga, u_an in gn, u_pn in gp
  const T d_an = pnorm_diff(a, n, dim, pnorm, eps, gn);
  T w_an = T(1), d_neg = d_an;
  if (swap) {
    const T d_pn = pnorm_diff(p, n, dim, pnorm, eps, gp);
    w_an = d_an < d_pn ? T(1) : (d_an == d_pn ? T(0.5) : T(0));
    d_neg = d_pn < d_an ? d_pn : d_an;
  }
  const T v = margin + d_ap - d_neg;
  if (grad) {
    const T on = v >= T(0) ? T(1) : T(0), w_pn = T(1) - w_an;
    for (int64_t k = 0; k < dim; ++k) {
      const T u_ap = ga[k], u_an = gn[k], u_pn = swap ? gp[k] : T(0);
      ga[k] = on * (u_ap - w_an * u_an);
      gp[k] = on * (-u_ap - w_pn * u_pn);
      gn[k] = on * (w_an * u_an + w_pn * u_pn);
    }
  }
  return v > T(0) || v != v ? v : T(0);  // NaN stays NaN (an overflowing p-norm), as in torch
}

}  // namespace triplet
}  // namespace fastmtl
