// CUDA Soft-NMS: one block of threads walks the selection rounds. Each round, a block-wide
// reduction finds the active box with the highest current score (ties: lowest index), and all
// threads decay the other active scores by their overlap with it. Only the count of selected
// boxes comes back to the host.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>

#include <cstdint>
#include <optional>
#include <tuple>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;

constexpr int kThreads = 1024;

template <typename T>
struct Best {
  T score;
  int64_t index;  // -1: none
};

// The better of two candidates: the higher score, then the lower index. Active scores are never
// NaN (a NaN score is never active: score >= threshold fails), so over distinct indices this is a
// total order: the operator is associative and commutative, and any reduction tree (cub's
// included) picks the same winner, the lowest index among the highest scores.
template <typename T>
struct Better {
  __device__ Best<T> operator()(const Best<T>& a, const Best<T>& b) const {
    if (a.index < 0) return b;
    if (b.index < 0) return a;
    return (b.score > a.score || (b.score == a.score && b.index < a.index)) ? b : a;
  }
};

template <typename T>
struct Params {
  int64_t n;
  nms::SoftMethod method;
  T iou_threshold, sigma, score_threshold;
};

// score: the current scores (decayed in place); active: 1 while a box may still be selected.
template <typename box_t, typename T>
__global__ void __launch_bounds__(kThreads)
    soft_nms_kernel(const box_t* __restrict__ boxes, const int64_t* __restrict__ cls, Params<T> p,
                    T* __restrict__ score, uint8_t* __restrict__ active, int64_t* __restrict__ keep,
                    T* __restrict__ kept_scores, int64_t* __restrict__ count) {
  using BlockBest = cub::BlockReduce<Best<T>, kThreads>;
  __shared__ typename BlockBest::TempStorage reduce_storage;
  __shared__ Best<T> winner;
  const T iou_threshold = p.iou_threshold, sigma = p.sigma, score_threshold = p.score_threshold;
  for (int64_t i = threadIdx.x; i < p.n; i += kThreads) active[i] = score[i] >= score_threshold;
  __syncthreads();
  int64_t selected = 0;
  for (;; ++selected) {
    Best<T> mine{T(0), -1};
    for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
      if (active[i]) mine = Better<T>{}(mine, Best<T>{score[i], i});
    }
    const Best<T> block_best = BlockBest(reduce_storage).Reduce(mine, Better<T>{});  // valid in thread 0
    if (threadIdx.x == 0) winner = block_best;
    __syncthreads();
    const Best<T> best = winner;  // rewritten next round, after the barrier that ends this one
    if (best.index < 0) break;
    const int64_t s = best.index;
    if (threadIdx.x == 0) {
      keep[selected] = s;
      kept_scores[selected] = best.score;
      active[s] = 0;
    }
    const Box<T> sel = box::load_box<T>(boxes + 4 * s);
    const T area_sel = box::area(sel);
    const int64_t cls_sel = cls ? cls[s] : 0;
    for (int64_t i = threadIdx.x; i < p.n; i += kThreads) {
      if (!active[i] || i == s || (cls && cls[i] != cls_sel)) continue;
      const Box<T> b = box::load_box<T>(boxes + 4 * i);
      const T decayed = score[i] * nms::soft_weight(nms::overlap(sel, b, area_sel, box::area(b)), p.method,
                                                    iou_threshold, sigma);
      score[i] = decayed;
      if (!(decayed >= score_threshold)) active[i] = 0;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) *count = selected;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                                 const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                 double sigma, double score_threshold, c10::string_view method) {
  const nms::SoftMethod decay =
      check_soft_nms_args(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  const auto b = boxes.contiguous();
  const at::Tensor c = idxs ? idxs->contiguous() : at::Tensor();
  at::Tensor keep = at::empty({n}, b.options().dtype(at::kLong)), kept_scores;
  auto count = at::zeros({1}, b.options().dtype(at::kLong));
  if (n == 0) return {keep, at::empty({0}, scores.options())};
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "soft_nms_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    // Thresholds compare as the doubles they are (see threshold_below), as on the CPU.
    const Params<T> params{n, decay, threshold_below<T>(iou_threshold), static_cast<T>(sigma),
                           threshold_at_or_above<T>(score_threshold)};
    // Scores are decayed in the boxes' compute type, in a copy.
    auto work = scores.to(c10::CppTypeToScalarType<T>::value, /*non_blocking=*/false, /*copy=*/true).contiguous();
    auto active = at::empty({n}, b.options().dtype(at::kByte));
    kept_scores = at::empty({n}, work.options());
    soft_nms_kernel<scalar_t, T><<<1, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        b.const_data_ptr<scalar_t>(), idxs ? c.const_data_ptr<int64_t>() : nullptr, params,
        work.mutable_data_ptr<T>(), active.mutable_data_ptr<uint8_t>(), keep.mutable_data_ptr<int64_t>(),
        kept_scores.mutable_data_ptr<T>(), count.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The one device-to-host copy: how many boxes were selected.
  const int64_t k = count.item<int64_t>();
  return {keep.narrow(0, 0, k), kept_scores.narrow(0, 0, k).to(scores.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("soft_nms", &soft_nms_cuda); }

}  // namespace fastmtl
