// Schemas, checks and the device-independent parts of the fused batch triplet loss: the Gram
// matrix and the backward's matrix products (ATen, so BLAS or cuBLAS), around the row kernels of
// triplet_cpu.cpp and triplet_cuda.cu.
#include "triplet.h"

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../grad_cache.h"

namespace fastmtl {

namespace {

constexpr int64_t kMaxRows = int64_t(1) << 20;  // the B x B buffers
constexpr double kNormEps = 1e-12;              // F.normalize's
// The matrix products inside compute in the embeddings' accumulation dtype, autocast or not (the
// kernels read that dtype; a bf16 Gram matrix would also lose the distances' digits).
constexpr auto kAutocastKeys = c10::DispatchKeySet({c10::DispatchKey::AutocastCPU, c10::DispatchKey::AutocastCUDA});

triplet::Mining parse_mining(c10::string_view mining) {
  static constexpr Choice<triplet::Mining> kChoices[] = {{"all", triplet::kAll},
                                                         {"hard", triplet::kHard},
                                                         {"semihard", triplet::kSemihard},
                                                         {"semihard_all", triplet::kSemihardAll}};
  return parse_choice(mining, "mining", kChoices);
}

triplet::Metric parse_distance(c10::string_view distance) {
  static constexpr Choice<triplet::Metric> kChoices[] = {
      {"euclidean", triplet::kEuclidean}, {"squared_euclidean", triplet::kSquared}, {"cosine", triplet::kCosine}};
  return parse_choice(distance, "distance", kChoices);
}

void check_args(const at::Tensor& x, const at::Tensor& labels, double margin) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1, "embeddings must have shape [B, D] with D >= 1, got ", x.sizes());
  check_kernel_float(x, "embeddings");
  TORCH_CHECK_VALUE(x.size(0) < kMaxRows, "embeddings: B = ", x.size(0),
                    " rows; at most 2^20 - 1 (the loss keeps B x B distances)");
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == x.size(0), "labels must have shape [", x.size(0), "], got ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong || labels.scalar_type() == at::kInt,
              "labels must be int64 or int32, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == x.device(), "labels must be on the device of embeddings, got ", labels.device(),
              " and ", x.device());
  TORCH_CHECK_VALUE(std::isfinite(margin), "margin must be finite, got ", margin);
}

// On the CPU (a device tensor's values would need a sync): the squared norms of the rows are
// finite exactly when the values are and their squares do not overflow, which the distances need.
void check_values(const at::Tensor& embeddings, const at::Tensor& squared_norms) {
  if (!embeddings.is_cpu() || squared_norms.isfinite().all().item<bool>()) return;
  TORCH_CHECK_VALUE(embeddings.isfinite().all().item<bool>(), "embeddings contains NaN or infinite values");
  TORCH_CHECK_VALUE(false, "embeddings: a row's squared norm overflows ", squared_norms.scalar_type(),
                    " (values too large for distances)");
}

}  // namespace

at::Tensor metric_rows(const at::Tensor& x, int metric) {
  if (metric != triplet::kCosine) return x;
  return x / x.norm(2, 1, true).clamp_min(kNormEps);
}

triplet::Metric check_backward_args(const at::Tensor& grad_loss, const at::Tensor& weights, const at::Tensor& pairs,
                                    const at::Tensor& embeddings, c10::string_view distance) {
  const int64_t b = embeddings.dim() == 2 ? embeddings.size(0) : -1;
  if (pairs.numel() > 0 || pairs.dim() == 2) {
    TORCH_CHECK(pairs.dim() == 2 && pairs.size(0) == b && pairs.size(1) == 2 && pairs.scalar_type() == at::kLong,
                "pairs must be int64 of shape [", b, ", 2], got ", pairs.scalar_type(), " ", pairs.sizes());
    TORCH_CHECK(weights.sizes() == pairs.sizes(), "weights must have the shape of pairs ", pairs.sizes(), ", got ",
                weights.sizes());
  } else {
    TORCH_CHECK(weights.dim() == 2 && weights.size(0) == b && weights.size(1) == b, "weights must have shape [", b,
                ", ", b, "], got ", weights.sizes());
  }
  TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == b, "grad_loss must have shape [", b, "], got ",
              grad_loss.sizes());
  return parse_distance(distance);
}

at::Tensor dense_weights(const at::Tensor& weights, const at::Tensor& pairs) {
  const int64_t b = pairs.size(0);
  const at::Tensor valid = pairs >= 0;  // a pair of -1 has weight 0
  return at::zeros({b, b}, weights.options())
      .scatter_add_(1, pairs.clamp_min(0), at::where(valid, weights, at::zeros_like(weights)));
}

at::Tensor cosine_input_grad(const at::Tensor& gu, const at::Tensor& x) {
  // u = x / max(|x|, eps): d/dx = (I - u u^T) / |x|, or I / eps where the norm is clamped
  const at::Tensor n = x.norm(2, 1, true);
  const at::Tensor u = x / n.clamp_min(kNormEps);
  const at::Tensor projected = (gu - (gu * u).sum(1, true) * u) / n.clamp_min(kNormEps);
  return at::where(n > kNormEps, projected, gu / kNormEps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> triplet_forward(
    const at::Tensor& embeddings, const at::Tensor& labels, double margin, c10::string_view mining,
    c10::string_view distance, bool compute_grad, const TripletKernels& kernels) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKeys);
  check_args(embeddings, labels, margin);
  const triplet::Mining mode = parse_mining(mining);
  const triplet::Metric metric = parse_distance(distance);
  const int64_t b = embeddings.size(0);
  const auto acc = accumulate_type(embeddings.scalar_type());
  const at::Tensor raw = embeddings.to(acc);
  const at::Tensor norms = (raw * raw).sum(1);  // cosine: unused by the kernels
  check_values(embeddings, norms);
  const at::Tensor x = metric_rows(raw, metric).contiguous();
  const at::Tensor long_labels = labels.to(at::kLong).contiguous();
  at::Tensor loss = at::empty({b}, x.options());
  at::Tensor stats = at::empty({b, triplet::kStats}, x.options().dtype(at::kDouble));
  if (mode == triplet::kHard) {  // no B x B output: O(B D) on the CPU
    at::Tensor w = at::empty(compute_grad ? at::IntArrayRef{b, 2} : at::IntArrayRef{0}, x.options());
    at::Tensor pairs = at::empty(compute_grad ? at::IntArrayRef{b, 2} : at::IntArrayRef{0}, x.options().dtype(at::kLong));
    if (b > 0) kernels.hard_rows(x, norms, long_labels, margin, metric, compute_grad, w, pairs, loss, stats);
    if (metric == triplet::kCosine) stats.narrow(1, triplet::kPosSum, 2).neg_();  // similarities
    return {loss, stats, w, pairs};
  }
  // The B x B buffers come from the CPU cache: a fresh 4 MB buffer's page faults cost as much as
  // the Gram product itself at B = 1024.
  at::Tensor d = cached_cpu_empty({b, b}, x.options());
  at::mm_out(d, x, x.t());  // the Gram matrix, then the distances in place
  at::Tensor w = cached_cpu_empty({b, b}, x.options());
  if (b > 0) {
    kernels.rows(x, norms, d, long_labels, margin, mode, metric, w, loss, stats);
    if (metric == triplet::kCosine) stats.narrow(1, triplet::kPosSum, 2).neg_();  // similarities
  }
  const at::Tensor none = at::empty({0}, x.options().dtype(at::kLong));
  return {loss, stats, compute_grad ? w : at::empty({0}, x.options()), none};
}

ExplicitArgs check_explicit_args(const at::Tensor& a, const at::Tensor& p, const at::Tensor& n, double margin,
                                 double pnorm, double eps, bool compute_grad) {
  TORCH_CHECK(a.dim() == 2, "anchor must have shape [B, D], got ", a.sizes());
  check_kernel_float(a, "anchor");
  const std::pair<const at::Tensor*, const char*> others[] = {{&p, "positive"}, {&n, "negative"}};
  for (const auto& [t, name] : others) {
    TORCH_CHECK(t->sizes() == a.sizes(), name, " must have the shape of anchor ", a.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == a.scalar_type() && t->device() == a.device(), name,
                " must have the dtype and device of anchor, got ", t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK_VALUE(std::isfinite(margin) && margin > 0, "margin must be finite and > 0 (as torch's), got ", margin);
  TORCH_CHECK_VALUE(std::isfinite(pnorm) && pnorm > 0, "p must be finite and > 0, got ", pnorm);
  TORCH_CHECK_VALUE(std::isfinite(eps), "eps must be finite, got ", eps);
  const auto acc = accumulate_type(a.scalar_type());
  ExplicitArgs out;
  out.a = a.contiguous();
  out.p = p.contiguous();
  out.n = n.contiguous();
  out.loss = at::empty({a.size(0)}, a.options().dtype(acc));
  out.grads = at::empty(compute_grad ? at::IntArrayRef{3, a.size(0), a.size(1)} : at::IntArrayRef{0},
                        a.options().dtype(acc));
  return out;
}

at::Tensor triplet_backward(const at::Tensor& grad_loss, const at::Tensor& weights, const at::Tensor& pairs,
                            const at::Tensor& embeddings, c10::string_view distance) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKeys);
  const triplet::Metric metric = check_backward_args(grad_loss, weights, pairs, embeddings, distance);
  const auto acc = accumulate_type(embeddings.scalar_type());
  const at::Tensor x = embeddings.to(acc);
  const at::Tensor w = pairs.dim() == 2 ? dense_weights(weights, pairs) : weights;
  const at::Tensor m = w * grad_loss.to(acc).unsqueeze(1);  // M[a, j] = g[a] w[a, j]
  if (metric != triplet::kCosine) {
    // d d(i, j) / d x_i = (x_i - x_j) w-folded: (rowsum + colsum) x_i - (M + M^T) x
    const at::Tensor scale = (m.sum(1) + m.sum(0)).unsqueeze(1);
    return (scale * x - at::mm(m, x) - at::mm(m.t(), x)).to(embeddings.scalar_type());
  }
  // s(i, j) = u_i . u_j: d/du_i = (M + M^T) u, then through the normalization
  const at::Tensor u = metric_rows(x, metric);
  return cosine_input_grad(at::mm(m, u) + at::mm(m.t(), u), x).to(embeddings.scalar_type());
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // The batch triplet loss of embeddings [B, D] with labels [B], mined online (mining "all",
  // "hard", "semihard" or "semihard_all"; distance "euclidean", "squared_euclidean" or "cosine").
  // Returns per anchor the sum of its triplets' losses [B] (float32 for half embeddings), the
  // statistics [B, 4] float64 (active triplets, mined triplets, sums of the mined d(a, p) and
  // d(a, n), similarities for cosine) and, with compute_grad, the weights of the gradient
  // (d loss_a / d d(a, j) folded with the metric's derivative) with the pairs they belong to: for
  // "hard" [B, 2] each (each anchor's positive and negative, -1 for none), otherwise weights
  // [B, B] and pairs [0] ([0] and [0] without compute_grad).
  m.def(
      "triplet_margin_loss(Tensor embeddings, Tensor labels, float margin, str mining, str distance, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  // The classic form, F.triplet_margin_loss's: rows of anchor, positive, negative [B, D] (one
  // float dtype), d(x, y) = |x - y + eps|_p. Returns the per-row losses [B] (float32 for half
  // inputs) and, with compute_grad, their gradients [3, B, D] (anchor, positive, negative; the
  // backward scales them by the incoming gradient).
  m.def(
      "triplet_loss(Tensor anchor, Tensor positive, Tensor negative, float margin, float p, float eps, "
      "bool swap, bool compute_grad) -> (Tensor, Tensor)");
  // d(sum_a grad_loss[a] loss[a]) / d embeddings, from the weights.
  m.def(
      "_triplet_margin_loss_backward(Tensor grad_loss, Tensor weights, Tensor pairs, Tensor embeddings, "
      "str distance) -> Tensor");
}
