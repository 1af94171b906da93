// CPU kernels of the Gram matrix and style loss: BLAS products (gram.cpp) and the per-element
// passes around them, parallel over rows with unit-stride inner loops.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../../kernels/gram.h"
#include "../checks.h"
#include "gram.h"

namespace fastmtl {
namespace {

// Enough elements per task to amortize the thread hand-off.
constexpr int64_t kElemsPerTask = 32768;

int64_t row_grain(int64_t c) { return std::max<int64_t>(1, kElemsPerTask / std::max<int64_t>(c, 1)); }

// out[n] = scale * U[n] mirrored, cast to the output type; one task per run of rows.
template <typename scalar_t>
void mirror(const at::opmath_type<scalar_t>* u, int64_t n, int64_t c, double scale, scalar_t* out) {
  using T = at::opmath_type<scalar_t>;
  const T s = static_cast<T>(scale);
  at::parallel_for(0, n * c, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % c;
      const T* ui = u + (r - i) * c;
      scalar_t* o = out + r * c;
      for (int64_t j = 0; j < c; ++j) o[j] = static_cast<scalar_t>(gram::gram_value(ui, i, j, c, s));
    }
  });
}

// m[n] = coef_n * (d[n] + d[n]^T), coef_n = coef * (scale_per_sample ? scale_per_sample[n] : 1).
template <typename T>
void symmetrize(const T* d, const T* scale_per_sample, int64_t n, int64_t c, T coef, T* m) {
  at::parallel_for(0, n * c, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % c, s = r / c;
      const T k = scale_per_sample ? coef * scale_per_sample[s] : coef;
      const T* ds = d + s * c * c;
      T* o = m + r * c;
      for (int64_t j = 0; j < c; ++j) o[j] = gram::symmetric_grad(ds, i, j, c, k);
    }
  });
}

// diff[n] = a * U[n] - target[n] and loss[n] = s * sum diff[n]^2. Each row's sum is its own; the
// rows are then added in order, so the result does not depend on the thread count.
template <typename T>
void style_forward(const T* u, const T* target, int64_t target_stride, int64_t n, int64_t c, gram::StyleScales k,
                   T* diff, T* loss) {
  const T a = static_cast<T>(k.a);
  std::vector<double> rows(n * c);
  at::parallel_for(0, n * c, row_grain(c), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % c, s = r / c;
      const T* us = u + s * c * c;
      const T* ts = target + s * target_stride;
      T* o = diff + r * c;
      T acc = T(0);
      for (int64_t j = 0; j < c; ++j) {
        const T v = gram::style_diff(us, ts, i, j, c, a);
        o[j] = v;
        acc += v * v;
      }
      rows[r] = acc;
    }
  });
  for (int64_t s = 0; s < n; ++s) {
    double total = 0.0;
    for (int64_t i = 0; i < c; ++i) total += rows[s * c + i];
    loss[s] = static_cast<T>(k.s * total);
  }
}

at::Tensor gram_matrix_cpu(const at::Tensor& features, bool normalize) {
  check_gram_features(features);
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  auto out = at::empty({n, c, c}, features.options());
  if (out.numel() == 0) return out;
  const at::Tensor u = gram_upper(features);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "gram_matrix_cpu", [&] {
    mirror<scalar_t>(u.const_data_ptr<at::opmath_type<scalar_t>>(), n, c, gram::gram_scale(c, p, normalize),
                     out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor gram_matrix_backward_cpu(const at::Tensor& grad, const at::Tensor& features, bool normalize) {
  check_gram_grad(grad, features);
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  if (features.numel() == 0) return symmetric_times_features(at::empty({n, c, c}, grad.options().dtype(acc)), features);
  const at::Tensor g = grad.to(acc).contiguous();
  auto m = at::empty({n, c, c}, g.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "gram_matrix_backward_cpu", [&] {
    symmetrize<scalar_t>(g.const_data_ptr<scalar_t>(), nullptr, n, c,
                         static_cast<scalar_t>(gram::gram_scale(c, p, normalize)), m.mutable_data_ptr<scalar_t>());
  });
  return symmetric_times_features(m, features);
}

std::tuple<at::Tensor, at::Tensor> style_loss_cpu(const at::Tensor& features, const at::Tensor& target_gram,
                                                  c10::string_view normalization) {
  const gram::Normalization norm = check_style_args(features, target_gram, normalization);
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  auto loss = at::zeros({n}, features.options().dtype(acc));
  auto diff = at::empty({n, c, c}, features.options().dtype(acc));
  if (diff.numel() == 0) return {loss, diff};
  const at::Tensor u = gram_upper(features);
  const at::Tensor t = target_gram.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(acc, "style_loss_cpu", [&] {
    style_forward<scalar_t>(u.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                            t.dim() == 3 ? c * c : 0, n, c, gram::style_scales(norm, c, p),
                            diff.mutable_data_ptr<scalar_t>(), loss.mutable_data_ptr<scalar_t>());
  });
  return {loss, diff};
}

at::Tensor style_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& features,
                                   c10::string_view normalization) {
  const gram::Normalization norm = check_style_grad(grad, diff, features, normalization);
  const int64_t n = features.size(0), c = features.size(1), p = features.size(2) * features.size(3);
  const auto acc = accumulate_type(features.scalar_type());
  auto m = at::empty({n, c, c}, diff.options());
  if (features.numel() == 0) return symmetric_times_features(m, features);
  const at::Tensor g = grad.contiguous(), d = diff.contiguous();
  const gram::StyleScales k = gram::style_scales(norm, c, p);
  AT_DISPATCH_FLOATING_TYPES(acc, "style_loss_backward_cpu", [&] {
    symmetrize<scalar_t>(d.const_data_ptr<scalar_t>(), g.const_data_ptr<scalar_t>(), n, c,
                         static_cast<scalar_t>(2.0 * k.s * k.a), m.mutable_data_ptr<scalar_t>());
  });
  return symmetric_times_features(m, features);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("gram_matrix", &gram_matrix_cpu);
  m.impl("_gram_matrix_backward", &gram_matrix_backward_cpu);
  m.impl("style_loss", &style_loss_cpu);
  m.impl("_style_loss_backward", &style_loss_backward_cpu);
}

}  // namespace fastmtl
