#pragma once
// Shared declarations of the fused batch triplet loss (math in csrc/kernels/triplet.h).
#include <ATen/core/Tensor.h>

#include <tuple>

#include "../../kernels/triplet.h"

namespace fastmtl {

// The device's kernels (x: the rows in the accumulation dtype, normalized for cosine; norms: the
// squared norms of the rows before that):
// - rows: the Gram matrix d [B, B] -> distances in place, then one pass per anchor row (-> weights
//   w [B, B], loss [B], stats [B, 4] float64);
// - hard_rows: batch-hard with no B x B output: loss, stats and, with compute_grad, the compact
//   weights w [B, 2] and pairs [B, 2] int64 (positive, negative; -1 for none).
struct TripletKernels {
  void (*rows)(const at::Tensor& x, const at::Tensor& norms, at::Tensor& d, const at::Tensor& labels, double margin,
               int mining, int metric, at::Tensor& w, at::Tensor& loss, at::Tensor& stats);
  void (*hard_rows)(const at::Tensor& x, const at::Tensor& norms, const at::Tensor& labels, double margin, int metric,
                    bool compute_grad, at::Tensor& w, at::Tensor& pairs, at::Tensor& loss, at::Tensor& stats);
};

// The forward of any device: checks, the Gram matrix (at::mm), the kernels. Returns per-anchor
// loss sums [B] (accumulation dtype), stats [B, 4] (active, mined, sum of d(a, p), of d(a, n);
// float64) and, with compute_grad, the weights the backward multiplies: [B, B] with pairs [0], or
// for batch-hard [B, 2] with pairs [B, 2] ([0] and [0] without compute_grad).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_forward(const at::Tensor& embeddings, const at::Tensor& labels,
                                                               double margin, c10::string_view mining,
                                                               c10::string_view distance, bool compute_grad,
                                                               const TripletKernels& kernels);

// The rows the distances are taken of: normalized for cosine (F.normalize's clamp at 1e-12).
at::Tensor metric_rows(const at::Tensor& x, int metric);

// Checks the backward's arguments (dense weights [B, B] with pairs [0], or compact [B, 2] with
// pairs [B, 2] int64); returns the metric.
triplet::Metric check_backward_args(const at::Tensor& grad_loss, const at::Tensor& weights, const at::Tensor& pairs,
                                    const at::Tensor& embeddings, c10::string_view distance);

// Dense [B, B] weights from compact ones (scattered on the device).
at::Tensor dense_weights(const at::Tensor& weights, const at::Tensor& pairs);

// The gradient with respect to x of a loss whose gradient with respect to x / max(|x|, eps) is gu.
at::Tensor cosine_input_grad(const at::Tensor& gu, const at::Tensor& x);

// The backward of any device (ATen matrix products only): the gradient of sum_a grad_loss[a] *
// loss[a] with respect to embeddings.
at::Tensor triplet_backward(const at::Tensor& grad_loss, const at::Tensor& weights, const at::Tensor& pairs,
                            const at::Tensor& embeddings, c10::string_view distance);

// The classic form's inputs made contiguous and its outputs allocated: loss [B] and, with
// compute_grad, grads [3, B, D] (accumulation dtype); checks name the argument.
struct ExplicitArgs {
  at::Tensor a, p, n, loss, grads;
};
ExplicitArgs check_explicit_args(const at::Tensor& a, const at::Tensor& p, const at::Tensor& n, double margin,
                                 double pnorm, double eps, bool compute_grad);

}  // namespace fastmtl
