// CUDA non-maximum suppression. After a device sort by score, one kernel writes the
// suppression bitmask (bit k of word [i, b]: box i suppresses box 64 b + k, both in score
// order) and a second, single-block kernel walks it on the device and writes the kept
// indices. Only the count of kept boxes comes back to the host (torchvision copies the whole
// N x N/64 mask); batched_nms adds a same-class test to the mask. The IoU is compared with the
// double threshold, as on the CPU (threshold_below in nms.h), so both devices keep the same boxes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;
using nms::kBlock;

constexpr int kReduceThreads = 1024;
static_assert(kReduceThreads >= nms::kBlock, "threads 0..63 of the reduction load the diagonal words");

// Tiles of 64 x 64 box pairs: only those on or above the diagonal (row block <= column block)
// are needed. The triangle of a words x words grid is folded into a rectangle of
// ceil(words / 2) rows of words + 1 tiles: rectangle row y holds triangle row y (its words - y
// tiles) and then triangle row words - 1 - y (its y + 1 tiles); for odd words the middle row
// would come twice and its second copy is skipped. No gridDim.y limit, no wasted lower half.
int64_t triangle_tiles(int64_t words) { return ceil_div(words, 2) * (words + 1); }

__device__ __forceinline__ bool triangle_tile(int64_t t, int64_t words, int64_t& row, int64_t& col) {
  const int64_t y = t / (words + 1), x = t % (words + 1);
  if (x < words - y) {
    row = y;
    col = y + x;
    return true;
  }
  row = words - 1 - y;
  col = row + (x - (words - y));
  return row > y;
}

// Each block fills one tile at a time (a grid-stride loop over the tiles, so any count fits
// the 1-D grid): thread k compares box 64 row + k with the 64 boxes of column block col, staged
// in shared memory, and writes word [64 row + k, col] of the mask. On the diagonal only the
// later boxes of the word are compared, so a diagonal word holds bits above k only.
template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    nms_mask_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ order,
                    const int64_t* __restrict__ cls, int64_t n, int64_t words, int64_t tiles,
                    at::opmath_type<scalar_t> threshold, uint64_t* __restrict__ mask) {
  using T = at::opmath_type<scalar_t>;
  __shared__ Box<T> col_boxes[kBlock];
  __shared__ T col_area[kBlock];
  __shared__ int64_t col_cls[kBlock];
  const int tid = threadIdx.x;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    int64_t row_block, col_block;
    if (!triangle_tile(t, words, row_block, col_block)) continue;  // the same t for the whole block
    const int64_t col0 = col_block * kBlock;
    const int cols = static_cast<int>(std::min<int64_t>(n - col0, kBlock));
    __syncthreads();  // the previous tile's columns are no longer read
    if (tid < cols) {
      const int64_t src = order[col0 + tid];
      col_boxes[tid] = box::load_box<T>(boxes + 4 * src);
      col_area[tid] = box::area(col_boxes[tid]);
      col_cls[tid] = cls ? cls[src] : 0;
    }
    __syncthreads();
    const int64_t i = row_block * kBlock + tid;
    if (i < n) {
      const int64_t src = order[i];
      const Box<T> a = box::load_box<T>(boxes + 4 * src);
      const T area_a = box::area(a);
      const int64_t cls_a = cls ? cls[src] : 0;
      uint64_t bits = 0;
      for (int k = (row_block == col_block ? tid + 1 : 0); k < cols; ++k) {
        if (col_cls[k] == cls_a && nms::suppresses(a, col_boxes[k], area_a, col_area[k], threshold)) {
          bits |= uint64_t(1) << k;
        }
      }
      mask[i * words + col_block] = bits;
    }
  }
}

// Shared memory of the reduction, in 64-bit words: the diagonal words of the current block (64),
// the positions of its kept boxes (64 int) and their count (one word), then, when it fits, the
// removed bitset (one word per 64 boxes).
constexpr int64_t kReduceFixedWords = kBlock + kBlock / 2 + 1;

// Greedy reduction of the mask by one block, 64 boxes (one word b) per step.
//
// Design. The serial part of greedy NMS is settling the boxes of word b among themselves; it
// needs only removed[b] and the 64 diagonal words mask[64 b + k, b], and here it works from
// shared memory alone: `removed` is a shared bitset (in global memory, the `removed_global`
// argument, only if it does not fit), and the diagonal words of block b are loaded by threads
// 0..63 in parallel during step b - 1 (their loads overlap the OR pass) and stored to shared
// memory. Thread 0 then settles word b with find-first-set over the boxes still alive, one
// shared load per kept box (diagonal words hold only later boxes, so this is exactly the greedy
// walk in score order, ties already broken by the stable sort). Then all threads OR the kept
// boxes' rows into the later words: thread t owns words b + 1 + t, b + 1 + t + blockDim.x, ...,
// ORs the kept rows' words there (for each kept row, a warp reads 32 consecutive words: one
// coalesced access) and updates removed[j] once. Kept indices are written by threads 0..c-1 in
// parallel; every thread counts them in a register.
//
// Synchronization, per step b: barrier A (removed[b] holds every earlier kept row and diag holds
// block b's words: both were written in step b - 1 or before it; kept_pos / kept_count of step
// b - 1 are no longer read) -> thread 0 settles, writing kept_pos / kept_count -> barrier B
// (those are visible; diag is no longer read) -> everyone reads kept_count, writes keep, ORs
// into removed[j > b] (each j owned by one thread in a step), and threads 0..63 store the next
// block's diagonal words.
template <bool kSharedRemoved>
__global__ void __launch_bounds__(kReduceThreads)
    nms_reduce_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ order, int64_t n,
                      int64_t words, uint64_t* __restrict__ removed_global, int64_t* __restrict__ keep,
                      int64_t* __restrict__ count) {
  extern __shared__ uint64_t smem[];
  uint64_t* diag = smem;
  int* kept_pos = reinterpret_cast<int*>(smem + kBlock);
  int* kept_count = kept_pos + kBlock;
  uint64_t* removed = kSharedRemoved ? smem + kReduceFixedWords : removed_global;
  const int tid = threadIdx.x;

  // Word [64 b + k, b] of the mask, or 0 past the last box.
  const auto diagonal_word = [&](int64_t b, int k) -> uint64_t {
    const int64_t i = b * kBlock + k;
    return i < n ? mask[i * words + b] : 0;
  };
  if (kSharedRemoved) {
    for (int64_t j = tid; j < words; j += blockDim.x) removed[j] = 0;
  }
  if (tid < kBlock) diag[tid] = diagonal_word(0, tid);

  int64_t total = 0;  // kept so far: the same in every thread
  for (int64_t b = 0; b < words; ++b) {
    const int64_t base = b * kBlock;
    __syncthreads();  // A
    if (tid == 0) {
      const int64_t valid = std::min<int64_t>(n - base, kBlock);
      uint64_t alive = ~removed[b] & (valid == kBlock ? ~uint64_t(0) : (uint64_t(1) << valid) - 1);
      int c = 0;
      while (alive) {
        const int k = __ffsll(static_cast<long long>(alive)) - 1;  // the first box still alive is kept
        kept_pos[c++] = k;
        alive &= ~(diag[k] | (uint64_t(1) << k));
      }
      *kept_count = c;
    }
    __syncthreads();  // B
    const int c = *kept_count;
    // Issued now, stored after the OR pass: the next block's diagonal does not depend on it.
    const uint64_t next_diag = (tid < kBlock && b + 1 < words) ? diagonal_word(b + 1, tid) : 0;
    if (tid < c) keep[total + tid] = order[base + kept_pos[tid]];
    if (c > 0) {
      for (int64_t j = b + 1 + tid; j < words; j += blockDim.x) {
        uint64_t bits = 0;
#pragma unroll 4
        for (int r = 0; r < c; ++r) bits |= mask[(base + kept_pos[r]) * words + j];
        removed[j] |= bits;
      }
    }
    if (tid < kBlock) diag[tid] = next_diag;
    total += c;
  }
  if (tid == 0) *count = total;
}

template <typename scalar_t>
void launch_nms(const at::Tensor& boxes, const at::Tensor& order, const int64_t* cls, double threshold,
                at::Tensor& mask, at::Tensor& keep, at::Tensor& count) {
  using T = at::opmath_type<scalar_t>;
  const int64_t n = boxes.size(0), words = ceil_div(n, kBlock);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t tiles = triangle_tiles(words);
  const int64_t grid = std::min<int64_t>(tiles, std::numeric_limits<int32_t>::max());
  // The CPU rule: IoU (in T) > the double threshold, decided in T by threshold_below.
  nms_mask_kernel<scalar_t><<<static_cast<unsigned int>(grid), kBlock, 0, stream>>>(
      boxes.const_data_ptr<scalar_t>(), order.const_data_ptr<int64_t>(), cls, n, words, tiles,
      threshold_below<T>(threshold), reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const auto* mask_ptr = reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>());
  const int64_t fixed_bytes = kReduceFixedWords * 8, shared_bytes = fixed_bytes + words * 8;
  // Up to ~1.8M boxes on sm_90 (227 KB): a mask that large would need over 400 GB anyway.
  if (shared_bytes <= static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin)) {
    if (shared_bytes > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(nms_reduce_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared_bytes)));
    }
    nms_reduce_kernel<true><<<1, kReduceThreads, shared_bytes, stream>>>(
        mask_ptr, order.const_data_ptr<int64_t>(), n, words, nullptr, keep.mutable_data_ptr<int64_t>(),
        count.mutable_data_ptr<int64_t>());
  } else {
    auto removed = at::zeros({words}, boxes.options().dtype(at::kLong));
    nms_reduce_kernel<false><<<1, kReduceThreads, fixed_bytes, stream>>>(
        mask_ptr, order.const_data_ptr<int64_t>(), n, words,
        reinterpret_cast<uint64_t*>(removed.mutable_data_ptr<int64_t>()), keep.mutable_data_ptr<int64_t>(),
        count.mutable_data_ptr<int64_t>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                         double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const auto b = boxes.contiguous();
  const auto order = std::get<1>(at::sort(scores.contiguous(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t words = ceil_div(n, kBlock);
  auto mask = at::empty({n, words}, b.options().dtype(at::kLong));
  auto keep = at::empty({n}, b.options().dtype(at::kLong));
  auto count = at::empty({1}, b.options().dtype(at::kLong));
  const at::Tensor cls = idxs ? idxs->contiguous() : at::Tensor();
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "nms_cuda", [&] {
    launch_nms<scalar_t>(b, order, idxs ? cls.const_data_ptr<int64_t>() : nullptr, iou_threshold, mask, keep,
                         count);
  });
  // The one device-to-host copy: how many boxes were kept, and whether a score was NaN (the
  // CPU kernel rejects those; here the check rides along with the count).
  const auto host = at::stack({count.squeeze(0), scores.isnan().any().to(at::kLong)}).cpu();
  TORCH_CHECK_VALUE(host[1].item<int64_t>() == 0, "scores must not contain NaN");
  return keep.narrow(0, 0, host[0].item<int64_t>());
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  return nms_cuda_impl(boxes, scores, &idxs, iou_threshold);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
}

}  // namespace fastmtl
