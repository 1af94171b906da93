// CUDA multiclass_nms with no host synchronization, so that it can sit in a CUDA graph.
// Every candidate (n, c) gets a sort key (its score, or -inf below the threshold); a segmented
// device sort orders each image's keys; then one block per image walks its candidates 64 at a
// time: each candidate is checked against the detections kept so far (read back from the
// output) and against the earlier candidates of its chunk; thread 0 settles the chunk in order
// from shared memory, and the kept candidates' threads copy them to the output in parallel.
// The walk stops at max_detections kept or at the first key below the threshold.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;

constexpr int kChunk = 64;  // candidates settled per step: one bit each in a uint64_t
constexpr int kLanes = 4;   // threads sharing the checks of one candidate

// key = score where score > threshold (compared in double), else -inf (NaN included).
template <typename score_t, typename K>
__global__ void candidate_keys_kernel(const score_t* __restrict__ scores, int64_t total, double threshold,
                                      K* __restrict__ keys) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const K s = static_cast<K>(scores[i]);
    keys[i] = static_cast<double>(s) > threshold ? s : -std::numeric_limits<K>::infinity();
  }
}

struct Sizes {
  int64_t n, classes, candidates, max_det;
  bool per_class_boxes;
};

template <typename box_t, typename K>
__global__ void __launch_bounds__(kChunk * kLanes)
    multiclass_greedy_kernel(const box_t* __restrict__ boxes, const K* __restrict__ keys,
                             const int64_t* __restrict__ order, Sizes sz, at::opmath_type<box_t> threshold,
                             box_t* __restrict__ out_boxes, K* __restrict__ out_scores,
                             int64_t* __restrict__ out_classes, int64_t* __restrict__ out_indices,
                             int64_t* __restrict__ counts) {
  using T = at::opmath_type<box_t>;
  __shared__ Box<T> cand_box[kChunk];
  __shared__ T cand_area[kChunk];
  __shared__ int64_t cand_flat[kChunk], cand_cls[kChunk];
  __shared__ unsigned long long earlier_hits[kChunk];  // bit j: chunk candidate j suppresses this one
  __shared__ int by_kept[kChunk];                      // suppressed by an already kept detection
  __shared__ int64_t out_slot[kChunk];                 // output row of a kept candidate
  __shared__ unsigned long long kept_mask;             // bit s: candidate s of the chunk is kept
  __shared__ int64_t kept;

  const int64_t image = blockIdx.x, m = sz.candidates;
  const box_t* img_boxes = boxes + image * sz.n * (sz.per_class_boxes ? sz.classes : 1) * 4;
  const int64_t out0 = image * sz.max_det;
  const int slot = threadIdx.x % kChunk, lane = threadIdx.x / kChunk;
  if (threadIdx.x == 0) kept = 0;
  for (int64_t base = 0; base < m; base += kChunk) {
    __syncthreads();
    if (kept >= sz.max_det) break;
    const int64_t p = image * m + base + slot;
    if (lane == 0) {
      const bool valid = base + slot < m && keys[p] > -std::numeric_limits<K>::infinity();
      cand_flat[slot] = valid ? order[p] : -1;
      if (valid) {
        const int64_t f = order[p];
        cand_box[slot] = box::load_box<T>(img_boxes + 4 * (sz.per_class_boxes ? f : f / sz.classes));
        cand_area[slot] = box::area(cand_box[slot]);
        cand_cls[slot] = f % sz.classes;
      }
      earlier_hits[slot] = 0;
      by_kept[slot] = 0;
    }
    __syncthreads();
    if (cand_flat[0] < 0) break;  // keys are sorted: nothing above the threshold is left
    if (cand_flat[slot] >= 0) {
      const Box<T> b = cand_box[slot];
      const T area_b = cand_area[slot];
      const int64_t c = cand_cls[slot];
      for (int64_t k = lane; k < kept; k += kLanes) {
        if (out_classes[out0 + k] != c) continue;
        const Box<T> a = box::load_box<T>(out_boxes + 4 * (out0 + k));
        if (nms::suppresses(a, b, box::area(a), area_b, threshold)) {
          by_kept[slot] = 1;
          break;
        }
      }
      unsigned long long bits = 0;
      for (int j = lane; j < slot; j += kLanes) {
        if (cand_cls[j] == c && nms::suppresses(cand_box[j], b, cand_area[j], area_b, threshold)) bits |= 1ull << j;
      }
      if (bits) atomicOr(&earlier_hits[slot], bits);
    }
    __syncthreads();
    // Thread 0 settles the chunk from shared memory alone: which candidates are kept, and where
    // each one goes in the output.
    if (threadIdx.x == 0) {
      unsigned long long kept_bits = 0;
      int64_t k = kept;
      for (int s = 0; s < kChunk && k < sz.max_det && cand_flat[s] >= 0; ++s) {
        if (by_kept[s] || (earlier_hits[s] & kept_bits)) continue;
        kept_bits |= 1ull << s;
        out_slot[s] = k++;
      }
      kept_mask = kept_bits;
      kept = k;
    }
    __syncthreads();
    // Each kept candidate's thread copies it out, in parallel; the next chunk reads these rows
    // after the barrier at the top of the loop.
    if (lane == 0 && ((kept_mask >> slot) & 1ull)) {
      const int64_t f = cand_flat[slot], k = out_slot[slot];
      const box_t* src = img_boxes + 4 * (sz.per_class_boxes ? f : f / sz.classes);
      for (int d = 0; d < 4; ++d) out_boxes[4 * (out0 + k) + d] = src[d];
      out_scores[out0 + k] = keys[p];
      out_classes[out0 + k] = cand_cls[slot];
      out_indices[out0 + k] = f / sz.classes;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) counts[image] = kept;
}

Detections multiclass_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores,
                                            double iou_threshold, double score_threshold, int64_t max_detections) {
  check_multiclass_nms_args(boxes, scores, iou_threshold, score_threshold, max_detections);
  const c10::cuda::CUDAGuard guard(boxes.device());
  auto detections = empty_detections(boxes, scores, max_detections);
  at::Tensor &out_boxes = std::get<0>(detections), &out_scores = std::get<1>(detections),
             &out_classes = std::get<2>(detections), &out_indices = std::get<3>(detections),
             &counts = std::get<4>(detections);
  const int64_t images = boxes.size(0), n = boxes.size(1), classes = scores.dim() == 3 ? scores.size(2) : 1;
  if (images == 0 || n == 0 || classes == 0 || max_detections == 0) return detections;
  TORCH_CHECK(images <= 2147483647, "boxes holds too many images for one launch: ", images);
  const Sizes sz{n, classes, n * classes, max_detections, boxes.dim() == 4};
  const auto b = boxes.contiguous(), s = scores.contiguous();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  FASTMTL_DISPATCH_BOXES(s.scalar_type(), "multiclass_nms_keys", [&] {
    using K = at::opmath_type<scalar_t>;  // float, or double: holds every score exactly
    auto keys = at::empty({images, sz.candidates}, s.options().dtype(c10::CppTypeToScalarType<K>::value));
    const int64_t total = keys.numel();
    const int64_t grid = grid_stride_blocks(total, 256);
    candidate_keys_kernel<<<grid, 256, 0, stream>>>(s.const_data_ptr<scalar_t>(), total, score_threshold,
                                                   keys.mutable_data_ptr<K>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Stable: equal scores stay in flat order (n * C + c).
    const auto sorted_order = at::sort(keys, /*stable=*/true, /*dim=*/1, /*descending=*/true);
    const at::Tensor& sorted = std::get<0>(sorted_order);
    const at::Tensor& order = std::get<1>(sorted_order);
    // Keys hold the scores exactly; half scores are written as float, then rounded back (exact).
    auto key_scores = out_scores.scalar_type() == keys.scalar_type() ? out_scores : at::zeros_like(out_scores, keys.options());
    FASTMTL_DISPATCH_BOXES(b.scalar_type(), "multiclass_nms_cuda", [&] {
      multiclass_greedy_kernel<scalar_t, K><<<images, kChunk * kLanes, 0, stream>>>(
          b.const_data_ptr<scalar_t>(), sorted.const_data_ptr<K>(), order.const_data_ptr<int64_t>(), sz,
          threshold_below<at::opmath_type<scalar_t>>(iou_threshold), out_boxes.mutable_data_ptr<scalar_t>(), key_scores.mutable_data_ptr<K>(),
          out_classes.mutable_data_ptr<int64_t>(), out_indices.mutable_data_ptr<int64_t>(),
          counts.mutable_data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (!key_scores.is_same(out_scores)) out_scores.copy_(key_scores);
  });
  return detections;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) { m.impl("multiclass_nms", &multiclass_nms_cuda); }

}  // namespace fastmtl
