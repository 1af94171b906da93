// CUDA non-maximum suppression. After a device sort by score, one kernel writes the
// suppression bitmask (bit k of word [i, b]: box i suppresses box 64 b + k, both in score
// order) and a second, single-block kernel walks it on the device and writes the kept
// indices. Only the count of kept boxes comes back to the host (torchvision copies the whole
// N x N/64 mask); batched_nms adds a same-class test to the mask.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;
using nms::kBlock;

constexpr int kReduceThreads = 256;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// torchvision's CUDA kernel takes the threshold as a float and compares the IoU (float, or
// double for double boxes) with it; the same here, for the same kept boxes.
template <typename scalar_t>
at::opmath_type<scalar_t> cuda_threshold(double threshold) {
  return static_cast<at::opmath_type<scalar_t>>(static_cast<float>(threshold));
}

// Block (bx, by) compares the 64 boxes of row block by with the 64 of column block bx; only
// blocks on or above the diagonal are needed by the reduction.
template <typename scalar_t>
__global__ void nms_mask_kernel(const scalar_t* __restrict__ boxes, const int64_t* __restrict__ order,
                                const int64_t* __restrict__ cls, int64_t n, int64_t words,
                                at::opmath_type<scalar_t> threshold, uint64_t* __restrict__ mask) {
  using T = at::opmath_type<scalar_t>;
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;
  __shared__ Box<T> col_boxes[kBlock];
  __shared__ T col_area[kBlock];
  __shared__ int64_t col_cls[kBlock];
  const int64_t col0 = col_block * kBlock;
  const int cols = static_cast<int>(n - col0 < kBlock ? n - col0 : kBlock);
  if (threadIdx.x < cols) {
    const int64_t src = order[col0 + threadIdx.x];
    col_boxes[threadIdx.x] = box::load_box<T>(boxes + 4 * src);
    col_area[threadIdx.x] = box::area(col_boxes[threadIdx.x]);
    col_cls[threadIdx.x] = cls ? cls[src] : 0;
  }
  __syncthreads();
  const int64_t i = row_block * kBlock + threadIdx.x;
  if (i >= n) return;
  const int64_t src = order[i];
  const Box<T> a = box::load_box<T>(boxes + 4 * src);
  const T area_a = box::area(a);
  const int64_t cls_a = cls ? cls[src] : 0;
  uint64_t bits = 0;
  for (int k = (row_block == col_block ? threadIdx.x + 1 : 0); k < cols; ++k) {
    if (col_cls[k] == cls_a && nms::suppresses(a, col_boxes[k], area_a, col_area[k], threshold)) {
      bits |= uint64_t(1) << k;
    }
  }
  mask[i * words + col_block] = bits;
}

// One block walks the mask in score order, 64 boxes at a time: thread 0 settles the boxes of
// word b (each kept box clears the later ones of the same word), then all threads OR the
// kept boxes' rows into the words after b.
__global__ void nms_reduce_kernel(const uint64_t* __restrict__ mask, const int64_t* __restrict__ order,
                                  int64_t n, int64_t words, uint64_t* __restrict__ removed,
                                  int64_t* __restrict__ keep, int64_t* __restrict__ count) {
  __shared__ int64_t kept_rows[kBlock];
  __shared__ int kept_in_word;
  __shared__ int64_t total;
  if (threadIdx.x == 0) total = 0;
  for (int64_t b = 0; b < words; ++b) {
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t w = removed[b];
      kept_in_word = 0;
      for (int k = 0; k < kBlock && b * kBlock + k < n; ++k) {
        if (w & (uint64_t(1) << k)) continue;
        const int64_t i = b * kBlock + k;
        keep[total++] = order[i];
        kept_rows[kept_in_word++] = i;
        w |= mask[i * words + b];
      }
    }
    __syncthreads();
    for (int r = 0; r < kept_in_word; ++r) {
      const uint64_t* row = mask + kept_rows[r] * words;
      for (int64_t j = b + 1 + threadIdx.x; j < words; j += blockDim.x) removed[j] |= row[j];
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) *count = total;
}

template <typename scalar_t>
void launch_nms(const at::Tensor& boxes, const at::Tensor& order, const int64_t* cls, double threshold,
                at::Tensor& mask, at::Tensor& removed, at::Tensor& keep, at::Tensor& count) {
  const int64_t n = boxes.size(0), words = ceil_div(n, kBlock);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(words, words);
  nms_mask_kernel<scalar_t><<<grid, kBlock, 0, stream>>>(boxes.const_data_ptr<scalar_t>(),
                                                          order.const_data_ptr<int64_t>(), cls, n, words,
                                                          cuda_threshold<scalar_t>(threshold),
                                                          reinterpret_cast<uint64_t*>(mask.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  nms_reduce_kernel<<<1, kReduceThreads, 0, stream>>>(
      reinterpret_cast<const uint64_t*>(mask.const_data_ptr<int64_t>()), order.const_data_ptr<int64_t>(), n, words,
      reinterpret_cast<uint64_t*>(removed.mutable_data_ptr<int64_t>()), keep.mutable_data_ptr<int64_t>(),
      count.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs,
                         double iou_threshold) {
  check_nms_args(boxes, scores, idxs, iou_threshold);
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  // gridDim.y is at most 65535 words of 64 boxes.
  TORCH_CHECK(ceil_div(n, kBlock) <= 65535, "boxes holds ", n, " boxes; at most ", 65535 * kBlock,
              " are supported on CUDA");
  const auto b = boxes.contiguous();
  const auto order = std::get<1>(at::sort(scores.contiguous(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t words = ceil_div(n, kBlock);
  auto mask = at::empty({n, words}, b.options().dtype(at::kLong));
  auto removed = at::zeros({words}, b.options().dtype(at::kLong));
  auto keep = at::empty({n}, b.options().dtype(at::kLong));
  auto count = at::empty({1}, b.options().dtype(at::kLong));
  const at::Tensor cls = idxs ? idxs->contiguous() : at::Tensor();
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "nms_cuda", [&] {
    launch_nms<scalar_t>(b, order, idxs ? cls.const_data_ptr<int64_t>() : nullptr, iou_threshold, mask, removed,
                         keep, count);
  });
  // The one device-to-host copy: how many boxes were kept, and whether a score was NaN (the
  // CPU kernel rejects those; here the check rides along with the count).
  const auto host = at::stack({count.squeeze(0), scores.isnan().any().to(at::kLong)}).cpu();
  TORCH_CHECK(host[1].item<int64_t>() == 0, "scores must not contain NaN");
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
