// CPU non-maximum suppression: sort once (stable), then greedy suppression in which each kept
// box clears the later boxes it overlaps with one branch-free, vectorized pass. batched_nms runs
// the classes in parallel, each over its own boxes only.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "../common.h"
#include "../../kernels/nms.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;

// Kept-box passes longer than this are split across threads.
constexpr int64_t kParallelSuppress = 32768;

// removed[j] |= (box a suppresses box j) for j < n; columns are unit-stride.
template <typename T>
FASTMTL_CPU_CLONES void suppress_row(const T* __restrict__ x1, const T* __restrict__ y1, const T* __restrict__ x2,
                                     const T* __restrict__ y2, const T* __restrict__ area, Box<T> a, T area_a,
                                     T threshold, uint8_t* __restrict__ removed, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    removed[j] |= static_cast<uint8_t>(
        nms::suppresses(a, Box<T>{x1[j], y1[j], x2[j], y2[j]}, area_a, area[j], threshold));
  }
}

// Greedy NMS over boxes given in decreasing score order, as columns of n entries.
// Returns the positions (0..n) that are kept, in order.
template <typename T>
std::vector<int64_t> greedy_nms(const std::vector<T>& cols, int64_t n, T threshold) {
  const T *x1 = cols.data(), *y1 = x1 + n, *x2 = y1 + n, *y2 = x2 + n, *area = y2 + n;
  std::vector<uint8_t> removed(n, 0);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i) {
    if (removed[i]) continue;
    kept.push_back(i);
    const Box<T> a{x1[i], y1[i], x2[i], y2[i]};
    const auto pass = [&](int64_t b, int64_t e) {
      suppress_row<T>(x1 + b, y1 + b, x2 + b, y2 + b, area + b, a, area[i], threshold, removed.data() + b, e - b);
    };
    if (n - i - 1 > kParallelSuppress) {
      at::parallel_for(i + 1, n, kParallelSuppress / 2, pass);
    } else {
      pass(i + 1, n);
    }
  }
  return kept;
}

// Columns x1 | y1 | x2 | y2 | area of the boxes at positions order[begin..end), in that order.
template <typename scalar_t, typename T = at::opmath_type<scalar_t>>
std::vector<T> gather_columns(const scalar_t* boxes, const int64_t* order, int64_t begin, int64_t end) {
  const int64_t n = end - begin;
  std::vector<T> cols(5 * n);
  for (int64_t p = 0; p < n; ++p) {
    const Box<T> b = box::load_box<T>(boxes + 4 * order[begin + p]);
    cols[p] = b.x1; cols[n + p] = b.y1; cols[2 * n + p] = b.x2; cols[3 * n + p] = b.y2;
    cols[4 * n + p] = box::area(b);
  }
  return cols;
}

// Indices sorted by decreasing score, ties by increasing index (a stable sort).
template <typename scalar_t>
std::vector<int64_t> score_order(const scalar_t* scores, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(!std::isnan(static_cast<double>(scores[i])), "scores must not contain NaN (at index ", i, ")");
  }
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return static_cast<double>(scores[a]) > static_cast<double>(scores[b]);
  });
  return order;
}

at::Tensor to_tensor(const std::vector<int64_t>& values, const at::Tensor& like) {
  auto out = at::empty({static_cast<int64_t>(values.size())}, like.options().dtype(at::kLong));
  std::copy(values.begin(), values.end(), out.mutable_data_ptr<int64_t>());
  return out;
}

std::vector<int64_t> order_by_score(const at::Tensor& scores) {
  std::vector<int64_t> order;
  FASTMTL_DISPATCH_BOXES(scores.scalar_type(), "nms_score_order", [&] {
    order = score_order(scores.const_data_ptr<scalar_t>(), scores.size(0));
  });
  return order;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_args(boxes, scores, nullptr, iou_threshold);
  const auto b = boxes.contiguous(), s = scores.contiguous();
  const std::vector<int64_t> order = order_by_score(s);
  std::vector<int64_t> keep;
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto cols = gather_columns(b.const_data_ptr<scalar_t>(), order.data(), 0, b.size(0));
    for (const int64_t p : greedy_nms<T>(cols, b.size(0), threshold_below<T>(iou_threshold)))
      keep.push_back(order[p]);
  });
  return to_tensor(keep, boxes);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  check_nms_args(boxes, scores, &idxs, iou_threshold);
  const auto b = boxes.contiguous(), s = scores.contiguous(), c = idxs.contiguous();
  const int64_t n = b.size(0);
  const std::vector<int64_t> order = order_by_score(s);
  // Group by class keeping the score order inside each class: rank[p] is a position in `order`.
  const int64_t* cls = c.const_data_ptr<int64_t>();
  std::vector<int64_t> rank(n);
  std::iota(rank.begin(), rank.end(), 0);
  std::stable_sort(rank.begin(), rank.end(), [&](int64_t a, int64_t b2) { return cls[order[a]] < cls[order[b2]]; });
  std::vector<int64_t> grouped(n), starts;
  for (int64_t p = 0; p < n; ++p) {
    grouped[p] = order[rank[p]];
    if (p == 0 || cls[grouped[p]] != cls[grouped[p - 1]]) starts.push_back(p);
  }
  starts.push_back(n);
  const int64_t classes = static_cast<int64_t>(starts.size()) - 1;
  std::vector<std::vector<int64_t>> kept_ranks(std::max<int64_t>(classes, 0));
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "batched_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    at::parallel_for(0, classes, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const auto cols = gather_columns(b.const_data_ptr<scalar_t>(), grouped.data(), starts[k], starts[k + 1]);
        for (const int64_t p : greedy_nms<T>(cols, starts[k + 1] - starts[k], threshold_below<T>(iou_threshold)))
          kept_ranks[k].push_back(rank[starts[k] + p]);
      }
    });
  });
  // Back to one list in decreasing score order: ascending rank.
  std::vector<int64_t> all;
  for (const auto& v : kept_ranks) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  for (auto& r : all) r = order[r];
  return to_tensor(all, boxes);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
}

}  // namespace fastmtl
