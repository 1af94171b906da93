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
FASTMTL_HD T squared_distance(const T* xi, const T* xj, int64_t dim, T norm_i, T norm_j, T gram) {
  const T fast = norm_i + norm_j - T(2) * gram;
  if (fast > (norm_i + norm_j) / T(64)) return fast;
  T exact = T(0);
  for (int64_t k = 0; k < dim; ++k) {
    const T diff = xi[k] - xj[k];
    exact += diff * diff;
  }
  return exact;
}

// The distance of a pair, from the Gram value (cosine: of the normalized rows; norms unused).
template <typename T>
FASTMTL_HD T pair_distance(int metric, const T* xi, const T* xj, int64_t dim, T norm_i, T norm_j, T gram) {
  if (metric == kCosine) return -gram;
  const T sq = squared_distance(xi, xj, dim, norm_i, norm_j, gram);
  return metric == kSquared ? sq : sqrt(sq);
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

// Anchor a's row: d[b] its distances, labels[b]; writes w[b] = d loss_a / d d(a, j) folded with
// the metric (euclidean: / d, 0 where d = 0; squared: x 2; cosine: x -1, a derivative in the
// similarity), returns the sums. Ties: the first index. The band of semi-hard negatives is
// 0 < d(a, n) - d(a, p) <= margin.
template <typename T, typename L>
FASTMTL_HD RowSums<T> anchor_row(const T* d, const L* labels, int64_t b, int64_t a, T margin, int mining,
                                  int metric, T* w) {
  RowSums<T> s;
  const L la = labels[a];
  for (int64_t j = 0; j < b; ++j) w[j] = T(0);
  if (mining == kHard) {
    int64_t p = -1, n = -1;
    for (int64_t j = 0; j < b; ++j) {
      if (labels[j] == la) {
        if (j != a && (p < 0 || d[j] > d[p])) p = j;
      } else if (n < 0 || d[j] < d[n]) {
        n = j;
      }
    }
    if (p >= 0 && n >= 0 && s.add(d[p], d[n], margin)) {
      w[p] += T(1);
      w[n] -= T(1);
    }
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
  for (int64_t j = 0; j < b; ++j) {
    if (metric == kEuclidean) w[j] = d[j] > T(0) ? w[j] / d[j] : T(0);
    else w[j] = metric == kSquared ? T(2) * w[j] : -w[j];
  }
  return s;
}

}  // namespace triplet
}  // namespace fastmtl
