// CPU kernels of the fused batch triplet loss: distances from the Gram matrix row by row, then one
// task per anchor row (mining, loss, statistics and gradient weights in one pass). Batch-hard
// takes the Gram matrix a block of rows at a time and keeps two weights per anchor: O(B D)
// memory. The backward takes the weights' nonzeros alone when they are few (batch-hard's two per
// anchor, FaceNet semi-hard's at most two per positive): O(nnz D) instead of two B x B x D products.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include "../common.h"
#include "triplet.h"

namespace fastmtl {
namespace {

constexpr int64_t kPairsPerTask = int64_t(1) << 15;

// Row i of the Gram matrix into distances, pair_distance's steps as whole-row loops the compiler
// vectorizes (the exact sums for cancelled pairs are rare and predictable).
template <typename T>
void distance_row(int metric, const T* x, const T* norms, int64_t b, int64_t dim, int64_t i, T* g) {
  if (metric != triplet::kCosine) {
    const T ni = norms[i];
    int32_t count = 0;  // cancelled pairs other than the diagonal
    for (int64_t j = 0; j < b; ++j) {
      g[j] = triplet::gram_squared(ni, norms[j], g[j]);
      count += triplet::cancelled(g[j], ni, norms[j]);
    }
    count -= triplet::cancelled(g[i], ni, ni);
    for (int64_t j = 0; count > 0 && j < b; ++j) {
      if (triplet::cancelled(g[j], ni, norms[j])) g[j] = triplet::exact_squared(x + i * dim, x + j * dim, dim);
    }
    g[i] = T(0);  // the exact sum of a row with itself
  }
  for (int64_t j = 0; j < b; ++j) g[j] = triplet::finish_distance(metric, g[j]);
}

// Each anchor row's distances, then its pass while the row is in the core's cache.
void rows_cpu(const at::Tensor& x, const at::Tensor& norms, at::Tensor& d, const at::Tensor& labels, double margin,
              int mining, int metric, at::Tensor& w, at::Tensor& loss, at::Tensor& stats) {
  const int64_t b = d.size(0), dim = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "triplet_rows_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = norms.const_data_ptr<scalar_t>();
    scalar_t* dp = d.mutable_data_ptr<scalar_t>();
    const int64_t* lp = labels.const_data_ptr<int64_t>();
    scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    double* st = stats.mutable_data_ptr<double>();
    // a row costs up to B^2 steps ("all" mining with two classes): small grains
    at::parallel_for(0, b, std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(b * b / 8, 1)),
                     [&](int64_t lo, int64_t hi) {
                       for (int64_t a = lo; a < hi; ++a) {
                         distance_row(metric, xp, np, b, dim, a, dp + a * b);
                         triplet::anchor_row(dp + a * b, lp, b, a, static_cast<scalar_t>(margin), mining, metric,
                                             wp + a * b)
                             .store(a, out, st);
                       }
                     });
  });
}

// Distances of this many pairs at a time in batch-hard's forward (a block of anchor rows against
// every row: 256 KiB of float32), so its memory stays O(B D) instead of B x B.
constexpr int64_t kBlockPairs = int64_t(1) << 16;

// Batch-hard: blocks of anchor rows, a task per block: its Gram products against every row (one
// BLAS call, single-threaded inside the task), their distances and their hardest pairs. One
// parallel region for the whole pass: a region per block spent its time in OpenMP's fork and join.
void hard_rows_cpu(const at::Tensor& x, const at::Tensor& norms, const at::Tensor& labels, double margin, int metric,
                   bool compute_grad, at::Tensor& w, at::Tensor& pairs, at::Tensor& loss, at::Tensor& stats) {
  const int64_t b = x.size(0), dim = x.size(1);
  const int64_t block = std::min(b, std::max<int64_t>(1, kBlockPairs / b));
  const int64_t blocks = (b + block - 1) / block;
  // Worker threads do not inherit the caller's below-autograd dispatch state: a row tensor that
  // requires grad would make at::mm_out refuse there.
  const at::Tensor rows_x = x.detach();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "triplet_hard_rows_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = norms.const_data_ptr<scalar_t>();
    const int64_t* lp = labels.const_data_ptr<int64_t>();
    scalar_t* wp = compute_grad ? w.mutable_data_ptr<scalar_t>() : nullptr;
    int64_t* pp = compute_grad ? pairs.mutable_data_ptr<int64_t>() : nullptr;
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    double* st = stats.mutable_data_ptr<double>();
    at::parallel_for(0, blocks, 1, [&](int64_t lo, int64_t hi) {
      at::Tensor scratch = at::empty({block, b}, x.options());
      for (int64_t k = lo; k < hi; ++k) {
        const int64_t first = k * block, rows = std::min(block, b - first);
        at::Tensor g = scratch.narrow(0, 0, rows);
        at::mm_out(g, rows_x.narrow(0, first, rows), rows_x.t());
        scalar_t* gp = g.mutable_data_ptr<scalar_t>();
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t a = first + i;
          distance_row(metric, xp, np, b, dim, a, gp + i * b);
          triplet::HardPair<scalar_t> pair;
          triplet::hard_row(gp + i * b, lp, b, a, static_cast<scalar_t>(margin), metric, pair).store(a, out, st);
          if (!compute_grad) continue;
          pp[2 * a] = pair.p;
          pp[2 * a + 1] = pair.n;
          wp[2 * a] = pair.wp;
          wp[2 * a + 1] = pair.wn;
        }
      }
    });
  });
}

// Nonzeros at most 1 in 16 of the B x B weights: the sparse backward (measured at B = 1024,
// D = 128: batch-hard's backward went from about 4 ms of matrix products to well under 1 ms).
constexpr int64_t kSparseShare = 16;

// The nonzeros of M = diag(g) W, by row (CSR: starts[b + 1], cols, vals in column order) and by
// column (the same entries, rows ascending).
template <typename T>
struct Nonzeros {
  std::vector<int64_t> row_start, cols, col_start, rows;
  std::vector<T> vals, col_vals;
};

// The nonzeros of M by row, in one pass over w: fixed chunks of rows collect theirs, then they
// are joined in row order. A chunk past 1 in kSparseShare of its entries stops the pass: the
// dense matrix products are then the cheaper backward (false).
template <typename T>
bool row_nonzeros(const T* w, const T* g, int64_t b, Nonzeros<T>& nz) {
  const int64_t chunks = std::min<int64_t>(b, 64);
  std::vector<std::vector<int64_t>> cols(chunks);
  std::vector<std::vector<T>> vals(chunks);
  nz.row_start.assign(b + 1, 0);
  std::atomic<bool> dense{false};
  at::parallel_for(0, chunks, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi && !dense.load(std::memory_order_relaxed); ++c) {
      const int64_t first = c * b / chunks, last = (c + 1) * b / chunks;
      const size_t cap = static_cast<size_t>((last - first) * b / kSparseShare);
      for (int64_t i = first; i < last; ++i) {
        const size_t before = cols[c].size();
        for (int64_t j = 0; j < b; ++j) {
          if (w[i * b + j] == T(0)) continue;
          cols[c].push_back(j);
          vals[c].push_back(g[i] * w[i * b + j]);
        }
        nz.row_start[i + 1] = static_cast<int64_t>(cols[c].size() - before);
        if (cols[c].size() > cap) {
          dense = true;
          return;
        }
      }
    }
  });
  if (dense) return false;
  for (int64_t i = 0; i < b; ++i) nz.row_start[i + 1] += nz.row_start[i];
  for (int64_t c = 0; c < chunks; ++c) {
    nz.cols.insert(nz.cols.end(), cols[c].begin(), cols[c].end());
    nz.vals.insert(nz.vals.end(), vals[c].begin(), vals[c].end());
  }
  return true;
}

// The nonzeros of M from batch-hard's compact weights (two per anchor at most: its positive and
// negative where the triplet is active).
template <typename T>
void compact_nonzeros(const T* w, const int64_t* pairs, const T* g, int64_t b, Nonzeros<T>& nz) {
  nz.row_start.assign(b + 1, 0);
  for (int64_t a = 0; a < b; ++a) {
    for (int k = 0; k < 2; ++k) {
      const T v = w[2 * a + k];
      if (v == T(0) || pairs[2 * a + k] < 0) continue;
      nz.cols.push_back(pairs[2 * a + k]);
      nz.vals.push_back(g[a] * v);
    }
    nz.row_start[a + 1] = static_cast<int64_t>(nz.cols.size());
  }
}

// The column view of the nonzeros (entries by column, rows ascending), from the row view.
template <typename T>
void column_nonzeros(int64_t b, Nonzeros<T>& nz) {
  const int64_t total = nz.row_start[b];
  std::vector<int64_t> per_col(b + 1, 0);
  for (int64_t k = 0; k < total; ++k) ++per_col[nz.cols[k] + 1];
  for (int64_t j = 0; j < b; ++j) per_col[j + 1] += per_col[j];
  nz.col_start = per_col;
  nz.rows.resize(total);
  nz.col_vals.resize(total);
  for (int64_t i = 0; i < b; ++i) {  // rows ascending within each column
    for (int64_t k = nz.row_start[i]; k < nz.row_start[i + 1]; ++k) {
      const int64_t at = per_col[nz.cols[k]]++;
      nz.rows[at] = i;
      nz.col_vals[at] = nz.vals[k];
    }
  }
}

// out[i] += sum over i's entries (j, v) of v (x_i - x_j), or of v u_j for cosine (the gradient
// with respect to the normalized rows); the column pass the same with the roles swapped.
template <typename T>
void add_pairs(const std::vector<int64_t>& start, const std::vector<int64_t>& other, const std::vector<T>& vals,
               const T* x, int64_t b, int64_t dim, bool cosine, T* out) {
  at::parallel_for(0, b, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      T* o = out + i * dim;
      const T* xi = x + i * dim;
      for (int64_t k = start[i]; k < start[i + 1]; ++k) {
        const T v = vals[k];
        const T* xj = x + other[k] * dim;
        if (cosine)
          for (int64_t e = 0; e < dim; ++e) o[e] += v * xj[e];
        else
          for (int64_t e = 0; e < dim; ++e) o[e] += v * (xi[e] - xj[e]);
      }
    }
  });
}

at::Tensor triplet_margin_loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& weights,
                                           const at::Tensor& pairs, const at::Tensor& embeddings,
                                           c10::string_view distance) {
  const triplet::Metric metric = check_backward_args(grad_loss, weights, pairs, embeddings, distance);
  const int64_t b = embeddings.size(0), dim = embeddings.size(1);
  const at::Tensor w = weights.contiguous();
  const bool compact = pairs.dim() == 2;
  if (b == 0) return triplet_backward(grad_loss, weights, pairs, embeddings, distance);
  const at::Tensor x = embeddings.to(w.scalar_type());
  const at::Tensor g = grad_loss.to(w.scalar_type()).contiguous();
  const at::Tensor p = pairs.contiguous();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "triplet_backward_cpu", [&] {
    Nonzeros<scalar_t> nz;
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    if (compact) {
      compact_nonzeros(w.const_data_ptr<scalar_t>(), p.const_data_ptr<int64_t>(), gp, b, nz);
    } else if (!row_nonzeros(w.const_data_ptr<scalar_t>(), gp, b, nz)) {
      return;  // dense: the matrix products
    }
    column_nonzeros(b, nz);
    const at::Tensor rows = metric_rows(x, metric).contiguous();
    out = at::zeros({b, dim}, w.options());
    const scalar_t* xp = rows.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const bool cosine = metric == triplet::kCosine;
    add_pairs(nz.row_start, nz.cols, nz.vals, xp, b, dim, cosine, op);     // d/dx_a of d(a, j)
    add_pairs(nz.col_start, nz.rows, nz.col_vals, xp, b, dim, cosine, op);  // d/dx_j of d(a, j)
  });
  if (!out.defined()) return triplet_backward(grad_loss, weights, pairs, embeddings, distance);
  if (metric == triplet::kCosine) out = cosine_input_grad(out, x);
  return out.to(embeddings.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_margin_loss_cpu(
    const at::Tensor& embeddings, const at::Tensor& labels, double margin, c10::string_view mining,
    c10::string_view distance, bool compute_grad) {
  static const TripletKernels kernels{&rows_cpu, &hard_rows_cpu};
  return triplet_forward(embeddings, labels, margin, mining, distance, compute_grad, kernels);
}

std::tuple<at::Tensor, at::Tensor> triplet_loss_cpu(const at::Tensor& anchor, const at::Tensor& positive,
                                                    const at::Tensor& negative, double margin, double pnorm,
                                                    double eps, bool swap, bool compute_grad) {
  ExplicitArgs x = check_explicit_args(anchor, positive, negative, margin, pnorm, eps, compute_grad);
  const int64_t b = anchor.size(0), dim = anchor.size(1);
  FASTMTL_DISPATCH_BOXES(x.a.scalar_type(), "triplet_loss_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t *ap = x.a.const_data_ptr<scalar_t>(), *pp = x.p.const_data_ptr<scalar_t>(),
                   *np = x.n.const_data_ptr<scalar_t>();
    T* out = x.loss.mutable_data_ptr<T>();
    T* g = compute_grad ? x.grads.mutable_data_ptr<T>() : nullptr;
    at::parallel_for(0, b, std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(dim, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        T* gi = g ? g + i * dim : nullptr;
        out[i] = triplet::explicit_row(ap + i * dim, pp + i * dim, np + i * dim, dim, static_cast<T>(margin),
                                       static_cast<T>(pnorm), static_cast<T>(eps), swap, gi,
                                       g ? gi + b * dim : nullptr, g ? gi + 2 * b * dim : nullptr);
      }
    });
  });
  return {x.loss, x.grads};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("triplet_loss", &triplet_loss_cpu);
  m.impl("triplet_margin_loss", &triplet_margin_loss_cpu);
  m.impl("_triplet_margin_loss_backward", &triplet_margin_loss_backward_cpu);
}

}  // namespace fastmtl
