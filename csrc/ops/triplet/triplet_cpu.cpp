// CPU kernels of the fused batch triplet loss: distances from the Gram matrix row by row, then one
// task per anchor row (mining, loss, statistics and gradient weights in one pass).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "../common.h"
#include "triplet.h"

namespace fastmtl {
namespace {

constexpr int64_t kPairsPerTask = int64_t(1) << 15;

void distances_cpu(const at::Tensor& x, const at::Tensor& norms, at::Tensor& gram, int metric) {
  const int64_t b = x.size(0), dim = x.size(1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "triplet_distances_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* np = norms.const_data_ptr<scalar_t>();
    scalar_t* g = gram.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, b, std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(b, 1)), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i)
        for (int64_t j = 0; j < b; ++j)
          g[i * b + j] = triplet::pair_distance(metric, xp + i * dim, xp + j * dim, dim, np[i], np[j], g[i * b + j]);
    });
  });
}

void rows_cpu(const at::Tensor& d, const at::Tensor& labels, double margin, int mining, int metric, at::Tensor& w,
              at::Tensor& loss, at::Tensor& stats) {
  const int64_t b = d.size(0);
  AT_DISPATCH_FLOATING_TYPES(d.scalar_type(), "triplet_rows_cpu", [&] {
    const scalar_t* dp = d.const_data_ptr<scalar_t>();
    const int64_t* lp = labels.const_data_ptr<int64_t>();
    scalar_t* wp = w.mutable_data_ptr<scalar_t>();
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    double* st = stats.mutable_data_ptr<double>();
    // a row costs up to B^2 steps ("all" mining with two classes): small grains
    at::parallel_for(0, b, std::max<int64_t>(1, kPairsPerTask / std::max<int64_t>(b * b / 8, 1)),
                     [&](int64_t lo, int64_t hi) {
                       for (int64_t a = lo; a < hi; ++a) {
                         const triplet::RowSums<scalar_t> s = triplet::anchor_row(
                             dp + a * b, lp, b, a, static_cast<scalar_t>(margin), mining, metric, wp + a * b);
                         out[a] = static_cast<scalar_t>(s.loss);
                         double* row = st + triplet::kStats * a;
                         row[triplet::kActive] = s.active;
                         row[triplet::kMined] = s.mined;
                         row[triplet::kPosSum] = s.pos;
                         row[triplet::kNegSum] = s.neg;
                       }
                     });
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> triplet_margin_loss_cpu(const at::Tensor& embeddings,
                                                                       const at::Tensor& labels, double margin,
                                                                       c10::string_view mining,
                                                                       c10::string_view distance, bool compute_grad) {
  static const TripletKernels kernels{&distances_cpu, &rows_cpu};
  return triplet_forward(embeddings, labels, margin, mining, distance, compute_grad, kernels);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("triplet_margin_loss", &triplet_margin_loss_cpu);
  m.impl("_triplet_margin_loss_backward", &triplet_backward);
}

}  // namespace fastmtl
