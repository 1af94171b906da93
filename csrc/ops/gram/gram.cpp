// Schemas, argument checks and the BLAS part of the Gram matrix and style loss ops.
#include "gram.h"

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>

#include "../checks.h"

namespace fastmtl {
namespace {

// Rows per block of the upper-triangle product. Measured on a 2-core AVX2 machine with MKL: 64
// keeps each product wide enough for BLAS to run near its full speed while skipping most of the
// lower triangle (C = 512: 8 block rows, 56% of the full product). Up to 96 channels the whole
// matrix is one block: the saving would not pay for the narrower products.
constexpr int64_t kGramBlock = 64;

// Fewest positions per chunk when the positions are split across threads.
constexpr int64_t kMinChunk = 1024;

int64_t block_rows(int64_t c) { return c <= 96 ? c : kGramBlock; }

// Features as [N, C, P]: a view for contiguous and channels_last tensors (the latter is F^T in
// memory, which BLAS reads as a transposed operand), a copy for other layouts.
at::Tensor features_matrix(const at::Tensor& features) {
  return features.reshape({features.size(0), features.size(1), features.size(2) * features.size(3)});
}

bool wants_channels_last(const at::Tensor& features) {
  return !features.is_contiguous() && features.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace

void check_gram_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 4, "features must have shape [N, C, H, W], got ", features.sizes());
  check_kernel_float(features, "features");
}

void check_gram_grad(const at::Tensor& grad, const at::Tensor& features) {
  check_gram_features(features);
  const int64_t n = features.size(0), c = features.size(1);
  TORCH_CHECK(grad.dim() == 3 && grad.size(0) == n && grad.size(1) == c && grad.size(2) == c,
              "grad must have shape [", n, ", ", c, ", ", c, "], got ", grad.sizes());
  TORCH_CHECK(grad.device() == features.device(), "grad must be on the device of features, got ",
              grad.device(), " and ", features.device());
  TORCH_CHECK(grad.scalar_type() == features.scalar_type(), "grad must be ", features.scalar_type(), ", got ",
              grad.scalar_type());
}

gram::Normalization parse_style_normalization(c10::string_view normalization) {
  static constexpr Choice<gram::Normalization> kNormalizations[] = {{"gatys", gram::kGatys}, {"mse", gram::kMse}};
  return parse_choice(normalization, "normalization", kNormalizations);
}

gram::Normalization check_style_args(const at::Tensor& features, const at::Tensor& target_gram,
                                     c10::string_view normalization) {
  check_gram_features(features);
  const int64_t n = features.size(0), c = features.size(1);
  const bool shape_ok = (target_gram.dim() == 2 && target_gram.size(0) == c && target_gram.size(1) == c) ||
                        (target_gram.dim() == 3 && target_gram.size(0) == n && target_gram.size(1) == c &&
                         target_gram.size(2) == c);
  TORCH_CHECK(shape_ok, "target_gram must have shape [", c, ", ", c, "] or [", n, ", ", c, ", ", c,
              "] for features ", features.sizes(), ", got ", target_gram.sizes());
  const auto t = target_gram.scalar_type();
  TORCH_CHECK(t == features.scalar_type() || t == accumulate_type(features.scalar_type()),
              "target_gram must be ", features.scalar_type(), " (the dtype of features) or ",
              accumulate_type(features.scalar_type()), ", got ", t);
  TORCH_CHECK(target_gram.device() == features.device(), "target_gram must be on the device of features, got ",
              target_gram.device(), " and ", features.device());
  return parse_style_normalization(normalization);
}

gram::Normalization check_style_grad(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& features,
                                     c10::string_view normalization) {
  check_gram_features(features);
  const int64_t n = features.size(0), c = features.size(1);
  const auto acc = accumulate_type(features.scalar_type());
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == n, "grad must have shape [", n, "], got ", grad.sizes());
  TORCH_CHECK(diff.dim() == 3 && diff.size(0) == n && diff.size(1) == c && diff.size(2) == c,
              "diff must have shape [", n, ", ", c, ", ", c, "], got ", diff.sizes());
  TORCH_CHECK(grad.scalar_type() == acc && diff.scalar_type() == acc, "grad and diff must be ", acc,
              ", got ", grad.scalar_type(), " and ", diff.scalar_type());
  TORCH_CHECK(grad.device() == features.device() && diff.device() == features.device(),
              "grad and diff must be on the device of features, got ", grad.device(), ", ", diff.device(),
              " and ", features.device());
  return parse_style_normalization(normalization);
}

at::Tensor gram_upper(const at::Tensor& features) {
  const auto acc = accumulate_type(features.scalar_type());
  const int64_t n = features.size(0), c = features.size(1);
  at::Tensor f = features_matrix(features);
  auto u = at::empty({n, c, c}, f.options().dtype(acc));
  if (u.numel() == 0) return u;
  if (f.size(2) == 0) return u.zero_();
  const int64_t b = block_rows(c);
  if (f.is_cuda()) {
    // cuBLAS, one batched product per block row. Half and bfloat16 run on tensor cores with
    // float32 accumulation and output (bmm's out_dtype); float32 uses TF32 when the user allows
    // it for matmuls (torch.backends.cuda.matmul.allow_tf32), as torch.bmm does.
    const bool mixed = f.scalar_type() != acc;
    for (int64_t r0 = 0; r0 < c; r0 += b) {
      const int64_t r1 = std::min(c, r0 + b);
      const at::Tensor rows = f.slice(1, r0, r1), cols = f.slice(1, r0, c).transpose(1, 2);
      u.slice(1, r0, r1).slice(2, r0, c).copy_(mixed ? at::bmm(rows, cols, acc) : at::bmm(rows, cols));
    }
    return u;
  }
  // CPU BLAS in float32 or float64: half and bfloat16 features are converted once.
  if (f.scalar_type() != acc) f = f.to(acc);
  // Block row r costs (nb - r) blocks, so rows r and nb - 1 - r together cost nb + 1 whatever r:
  // tasks of such pairs (per sample) are equal, and one parallel region covers the whole product
  // with single-threaded BLAS calls inside. With fewer tasks than threads (one image, few
  // channels), the positions are split in chunks too, each with its own partial sums, added at
  // the end (so the last bits depend on the thread count, as a BLAS call's do).
  const int64_t nb = (c + b - 1) / b, pairs = (nb + 1) / 2, p = f.size(2);
  const int64_t tasks = n * pairs, threads = at::get_num_threads();
  const int64_t chunks =
      tasks >= threads ? 1 : std::min((threads + tasks - 1) / tasks, std::max<int64_t>(1, p / kMinChunk));
  const at::Tensor parts = chunks > 1 ? at::zeros({chunks, n, c, c}, u.options()) : u.unsqueeze(0);
  auto block_row = [&](int64_t i, int64_t r, int64_t k) {
    const int64_t r0 = r * b, r1 = std::min(c, r0 + b);
    const at::Tensor fi = f[i].slice(1, k * p / chunks, (k + 1) * p / chunks);
    at::Tensor out = parts[k][i].slice(0, r0, r1).slice(1, r0, c);
    at::mm_out(out, fi.slice(0, r0, r1), fi.slice(0, r0, c).t());
  };
  auto task = [&](int64_t t) {
    const int64_t k = t % chunks, i = t / chunks / pairs, q = t / chunks % pairs;
    block_row(i, q, k);
    if (nb - 1 - q != q) block_row(i, nb - 1 - q, k);
  };
  if (tasks * chunks > 1 && threads > 1) {
    at::parallel_for(0, tasks * chunks, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's dispatch state: keep autograd out of the
      // products here as the dispatcher did for this kernel.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t t = begin; t < end; ++t) task(t);
    });
  } else {
    for (int64_t t = 0; t < tasks; ++t) task(t);  // BLAS threads inside each product
  }
  if (chunks > 1) u.copy_(parts.sum(0));
  return u;
}

at::Tensor symmetric_times_features(const at::Tensor& m, const at::Tensor& features) {
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const bool channels_last = wants_channels_last(features);
  auto grad = at::empty(features.sizes(), features.options().memory_format(
                                              channels_last ? at::MemoryFormat::ChannelsLast
                                                            : at::MemoryFormat::Contiguous));
  if (grad.numel() == 0) return grad;
  at::Tensor f = features_matrix(features);
  const at::Tensor& mm = m;
  bool convert_out = false;
  if (f.scalar_type() != m.scalar_type()) {
    // The product in float32, converted back at the end. M holds small scaled values (1/(C P)
    // and less) that half would flush to zero, so it is never rounded to the features' type.
    f = f.to(m.scalar_type());
    convert_out = true;
  }
  // Contiguous: out[n] = M F, C x P. Channels_last: out^T[n] = F^T M (M = M^T), P x C, which is
  // the NHWC memory: the gradient keeps the layout of the features and no copy is made.
  at::Tensor out = channels_last ? grad.permute({0, 2, 3, 1}).view({n, p, c}) : grad.view({n, c, p});
  at::Tensor target = convert_out ? at::empty(out.sizes(), out.options().dtype(m.scalar_type())) : out;
  if (channels_last) {
    at::bmm_out(target, f.transpose(1, 2), mm);
  } else {
    at::bmm_out(target, mm, f);
  }
  if (convert_out) out.copy_(target);
  return grad;
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // features [N, C, H, W] -> [N, C, C] in the dtype of features; divided by C * H * W when normalize.
  m.def("gram_matrix(Tensor features, bool normalize) -> Tensor");
  m.def("_gram_matrix_backward(Tensor grad, Tensor features, bool normalize) -> Tensor");
  // normalization: "gatys" (J_style of the lecture, unnormalized Gram) or "mse" (normalized Gram,
  // mean of squares). Returns the per-sample loss [N] and diff = a * Gram - target [N, C, C], both
  // in float32 for half/bfloat16 features, else their dtype; diff is what the backward needs.
  m.def("style_loss(Tensor features, Tensor target_gram, str normalization) -> (Tensor, Tensor)");
  m.def("_style_loss_backward(Tensor grad, Tensor diff, Tensor features, str normalization) -> Tensor");
}
