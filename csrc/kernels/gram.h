#pragma once
// Torch-free per-element math of the Gram matrix and the style loss, shared verbatim by the CPU
// and CUDA kernels. The matrix products themselves are BLAS calls (see csrc/ops/gram/gram.cpp);
// what is here is everything around them: scales, the mirror of the upper triangle, the
// difference to the target and its sum of squares, and the symmetric gradient matrix.
//
// Per sample, F is the C x P matrix of the features (P = H * W positions) and U its Gram matrix
// F F^T, of which only the upper triangle (k <= k') is computed and read.
//   gram_matrix:  G = g * U,  g = 1 / (C * P) when normalized, else 1.
//   style_loss:   D = a * U - T,  loss = s * sum_kk' D[k,k']^2  with, by normalization,
//                   gatys: a = 1,           s = 1 / (2 * P * C)^2    (J_style of the lecture)
//                   mse:  a = 1 / (C * P),  s = 1 / C^2              (mean of squares, as the
//                                                                      PyTorch tutorial)
//   backward:     dL/dF = M F,  M = c * (D + D^T): symmetric, so one product whatever T is;
//                   gram_matrix: c = g * grad_scale (grad is dL/dG, D its incoming gradient),
//                   style_loss:  c = 2 * s * a * dL/dloss.
#include <cmath>
#include <cstdint>

#include "hd.h"

namespace fastmtl {
namespace gram {

enum Normalization : int64_t { kGatys = 0, kMse = 1 };

// Scale of the normalized Gram matrix: 1 / (C * P), or 1 without normalization (and for empty
// features, whose Gram matrix is all zeros).
FASTMTL_HD double gram_scale(int64_t c, int64_t p, bool normalize) {
  return normalize && c > 0 && p > 0 ? 1.0 / (static_cast<double>(c) * static_cast<double>(p)) : 1.0;
}

// The two constants of the style loss: D = a * U - T, loss = s * sum D^2.
struct StyleScales {
  double a;
  double s;
};

FASTMTL_HD StyleScales style_scales(Normalization normalization, int64_t c, int64_t p) {
  const double dc = c > 0 ? static_cast<double>(c) : 1.0;
  if (normalization == kMse) return {gram_scale(c, p, true), 1.0 / (dc * dc)};
  const double d = 2.0 * dc * (p > 0 ? static_cast<double>(p) : 1.0);
  return {1.0, 1.0 / (d * d)};
}

// Offset of element (i, j) of a C x C matrix inside its computed upper triangle.
FASTMTL_HD int64_t upper_offset(int64_t i, int64_t j, int64_t c) { return i <= j ? i * c + j : j * c + i; }

// One element of G from the upper triangle of U.
template <typename T>
FASTMTL_HD T gram_value(const T* u, int64_t i, int64_t j, int64_t c, T scale) {
  return scale * u[upper_offset(i, j, c)];
}

// One element of D.
template <typename T>
FASTMTL_HD T style_diff(const T* u, const T* target, int64_t i, int64_t j, int64_t c, T a) {
  return a * u[upper_offset(i, j, c)] - target[i * c + j];
}

// One element of the symmetric matrix M = coef * (D + D^T).
template <typename T>
FASTMTL_HD T symmetric_grad(const T* d, int64_t i, int64_t j, int64_t c, T coef) {
  return coef * (d[i * c + j] + d[j * c + i]);
}

}  // namespace gram
}  // namespace fastmtl
