// CUDA kernels of RoI align and RoI pool, one thread per element, math from csrc/kernels/roi.h.
//
// Forward: one thread per output element. Backward: one thread per incoming gradient element,
// scattering with atomicAdd (fast; the order of the adds, so the rounding, varies from run to
// run). roi_align also has a deterministic backward that gathers instead: each input element sums
// the terms of the rois that reach it, in roi order, with no atomics (see "Deterministic backward"
// below for how it finds them without scanning every roi).
//
// Batch indices are not checked on the host (that would wait for the device): a roi whose index
// names no image gives zeros in the forward (argmax -1) and no gradient.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "../../kernels/roi.h"
#include "../common.h"
#include "roi.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;

// Sizes shared by the kernels.
struct Dims {
  int64_t n, c, h, w, ph, pw;
};

// Element i of a [K, C, PH, PW] tensor as (k, c, ph, pw).
struct Bin {
  int64_t k, c;
  int ph, pw;
};

__device__ __forceinline__ Bin bin_of(int64_t i, const Dims& d) {
  Bin b;
  b.pw = static_cast<int>(i % d.pw);
  b.ph = static_cast<int>((i / d.pw) % d.ph);
  b.c = (i / (d.pw * d.ph)) % d.c;
  b.k = i / (d.pw * d.ph * d.c);
  return b;
}

template <typename T, typename scalar_t>
__device__ __forceinline__ void align_axes(const scalar_t* r, T scale, const Dims& d, int sampling_ratio,
                                           bool aligned, roi::AlignAxis<T>& ay, roi::AlignAxis<T>& ax) {
  ay = roi::align_axis<T>(static_cast<T>(r[2]), static_cast<T>(r[4]), scale, static_cast<int>(d.ph),
                          sampling_ratio, aligned);
  ax = roi::align_axis<T>(static_cast<T>(r[1]), static_cast<T>(r[3]), scale, static_cast<int>(d.pw),
                          sampling_ratio, aligned);
}

// ---- RoI align ------------------------------------------------------------------------------

// Calls f(offset in the plane, weight) for the four bilinear taps of every sample of a bin.
template <typename T, typename F>
__device__ __forceinline__ void for_each_tap(const roi::AlignAxis<T>& ay, const roi::AlignAxis<T>& ax, const Bin& bin,
                                             const Dims& d, F f) {
  for (int iy = 0; iy < ay.grid; ++iy) {
    int y0, y1;
    T wy0, wy1;
    if (!roi::axis_taps(roi::sample_pos(ay, bin.ph, iy), int(d.h), y0, y1, wy0, wy1)) continue;
    for (int ix = 0; ix < ax.grid; ++ix) {
      int x0, x1;
      T wx0, wx1;
      if (!roi::axis_taps(roi::sample_pos(ax, bin.pw, ix), int(d.w), x0, x1, wx0, wx1)) continue;
      f(y0 * d.w + x0, wy0 * wx0);
      f(y0 * d.w + x1, wy0 * wx1);
      f(y1 * d.w + x0, wy1 * wx0);
      f(y1 * d.w + x1, wy1 * wx1);
    }
  }
}

template <typename scalar_t>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                                         Dims d, int64_t total, at::opmath_type<scalar_t> scale,
                                         int sampling_ratio, bool aligned, scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Bin bin = bin_of(i, d);
    const scalar_t* r = rois + 5 * bin.k;
    const int64_t b = roi::batch_index(static_cast<T>(r[0]), d.n);
    if (b < 0) {
      out[i] = scalar_t(0);
      continue;
    }
    roi::AlignAxis<T> ay, ax;
    align_axes(r, scale, d, sampling_ratio, aligned, ay, ax);
    const scalar_t* plane = input + (b * d.c + bin.c) * d.h * d.w;
    const T count = roi::sample_count(ay, ax);
    T sum = T(0);
    for_each_tap(ay, ax, bin, d, [&](int64_t at, T w) { sum += w * static_cast<T>(plane[at]); });
    sum /= count;
    if (!isfinite(sum)) {  // overflowed near the float limit: each weight divided first keeps it a mean
      sum = T(0);
      for_each_tap(ay, ax, bin, d, [&](int64_t at, T w) { sum += w / count * static_cast<T>(plane[at]); });
    }
    out[i] = static_cast<scalar_t>(sum);
  }
}

// Scatter: thread i adds bin i's gradient to the four taps of each of its samples.
template <typename scalar_t>
__global__ void roi_align_backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 Dims d, int64_t total, at::opmath_type<scalar_t> scale,
                                                 int sampling_ratio, bool aligned,
                                                 at::opmath_type<scalar_t>* __restrict__ grad_input) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Bin bin = bin_of(i, d);
    const scalar_t* r = rois + 5 * bin.k;
    const int64_t b = roi::batch_index(static_cast<T>(r[0]), d.n);
    if (b < 0) continue;
    roi::AlignAxis<T> ay, ax;
    align_axes(r, scale, d, sampling_ratio, aligned, ay, ax);
    const T g = static_cast<T>(grad[i]) / roi::sample_count(ay, ax);
    T* plane = grad_input + (b * d.c + bin.c) * d.h * d.w;
    for_each_tap(ay, ax, bin, d, [&](int64_t at, T w) { atomicAdd(plane + at, g * w); });
  }
}

// ---- Deterministic backward ------------------------------------------------------------------
//
// grad_input[b, c, y, x] = sum over the rois k of image b, in ascending k, of
//   (sum_ph wy_k[ph](y) * (sum_pw wx_k[pw](x) * grad[k, c, ph, pw])) / count_k
// with wy, wx the summed tap weights of roi::axis_weight, ph and pw ascending: the sums of the
// previous gather (every element scanned every roi), term for term, so the same bits. What changed
// is which rois and bins an element looks at:
//  1. prepare: per roi, its batch index, axes and divisor (RoiInfo), and for every bin the pixels
//     its taps can touch (roi::align_bin_reach, exact); the roi's extent is their union. A roi
//     whose index names no image, or that touches no pixel, gets the key N (no image).
//  2. a stable radix sort (cub) of the roi indices by key, then bucket[b] = the first sorted
//     position with key >= b (bisection): the rois of image b, ascending, are
//     order[bucket[b] .. bucket[b + 1]). A counting sort by image on the device: no host sync.
//  3. gather: a block takes 256 consecutive pixels of one image plane (a tile) and kChannels<T>
//     channels. It walks its image's rois kThreads at a time, keeps (order-preserving compaction)
//     those whose extent meets the tile's bounding box in shared memory, and each thread adds, roi
//     by roi, the terms of those whose extent holds its pixel: only the bins whose reach holds the
//     pixel, and in each only the samples that can touch it (roi::axis_weight). The tap weights
//     serve all kChannels channels.
// No atomics anywhere (the sort's output is fully determined by its stable order), and each
// element is written by one thread: the result is the same from run to run.

// Channels per thread in the gather (fewer in double, whose registers are twice as wide).
template <typename T>
constexpr int kChannels = sizeof(T) > 4 ? 4 : 8;

// Everything the gather needs of one roi (the same values align_axes and sample_count give).
template <typename T>
struct RoiInfo {
  T y_start, y_bin, x_start, x_bin, count;
  int y_grid, x_grid;
  int y0, y1, x0, x1;  // extent: the pixels its taps can touch (y0 > y1 or x0 > x1: none)
  int k;               // its index
};

template <typename scalar_t>
__global__ void roi_align_prepare_kernel(const scalar_t* __restrict__ rois, int64_t k_count, Dims d,
                                         at::opmath_type<scalar_t> scale, int sampling_ratio, bool aligned,
                                         RoiInfo<at::opmath_type<scalar_t>>* __restrict__ info,
                                         int2* __restrict__ reach, int* __restrict__ keys, int* __restrict__ order) {
  using T = at::opmath_type<scalar_t>;
  const int ph_count = static_cast<int>(d.ph), pw_count = static_cast<int>(d.pw);
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < k_count; k += int64_t(gridDim.x) * blockDim.x) {
    const scalar_t* r = rois + 5 * k;
    const int64_t b = roi::batch_index(static_cast<T>(r[0]), d.n);
    roi::AlignAxis<T> ay, ax;
    align_axes(r, scale, d, sampling_ratio, aligned, ay, ax);
    RoiInfo<T> ri;
    ri.y_start = ay.start;
    ri.y_bin = ay.bin;
    ri.x_start = ax.start;
    ri.x_bin = ax.bin;
    ri.count = roi::sample_count(ay, ax);
    ri.y_grid = ay.grid;
    ri.x_grid = ax.grid;
    ri.k = static_cast<int>(k);
    int2* rr = reach + k * (ph_count + pw_count);
    int lo = INT_MAX, hi = -1;
    for (int ph = 0; ph < ph_count; ++ph) {
      int f, l;
      roi::align_bin_reach(ay, ph, int(d.h), f, l);
      rr[ph] = make_int2(f, l);
      if (f <= l) {
        lo = min(lo, f);
        hi = max(hi, l);
      }
    }
    ri.y0 = lo;
    ri.y1 = hi;
    lo = INT_MAX;
    hi = -1;
    for (int pw = 0; pw < pw_count; ++pw) {
      int f, l;
      roi::align_bin_reach(ax, pw, int(d.w), f, l);
      rr[ph_count + pw] = make_int2(f, l);
      if (f <= l) {
        lo = min(lo, f);
        hi = max(hi, l);
      }
    }
    ri.x0 = lo;
    ri.x1 = hi;
    info[k] = ri;
    const bool reaches = ri.y0 <= ri.y1 && ri.x0 <= ri.x1;
    keys[k] = b >= 0 && reaches ? static_cast<int>(b) : static_cast<int>(d.n);
    order[k] = static_cast<int>(k);
  }
}

// bucket[b] = the first position of sorted_keys (ascending) whose key is >= b, for b in [0, n].
__global__ void roi_bucket_kernel(const int* __restrict__ sorted_keys, int k_count, int n, int* __restrict__ bucket) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b <= n; b += int64_t(gridDim.x) * blockDim.x) {
    int first = 0, count = k_count;
    while (count > 0) {
      const int half = count / 2, mid = first + half;
      if (sorted_keys[mid] < b) {
        first = mid + 1;
        count -= half + 1;
      } else {
        count = half;
      }
    }
    bucket[b] = first;
  }
}

// Work item (image b, channel group, tile of kThreads consecutive plane positions), tiles fastest;
// blocks stride over the items. All loop bounds and branches around barriers depend on the item
// only, so every thread of the block reaches every __syncthreads.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    roi_align_backward_gather_kernel(const scalar_t* __restrict__ grad,
                                     const RoiInfo<at::opmath_type<scalar_t>>* __restrict__ info,
                                     const int2* __restrict__ reach, const int* __restrict__ order,
                                     const int* __restrict__ bucket, Dims d, int64_t tiles, int64_t groups,
                                     int64_t items, scalar_t* __restrict__ grad_input) {
  using T = at::opmath_type<scalar_t>;
  constexpr int kGroup = kChannels<T>;
  __shared__ RoiInfo<T> listed[kThreads];
  __shared__ int warp_taken[kThreads / 32];
  const int ph_count = static_cast<int>(d.ph), pw_count = static_cast<int>(d.pw);
  const int height = static_cast<int>(d.h), width = static_cast<int>(d.w);
  const int64_t plane = d.h * d.w, bins = d.ph * d.pw;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t tile = item % tiles;
    const int64_t c0 = (item / tiles) % groups * kGroup;
    const int64_t b = item / (tiles * groups);
    const int64_t p0 = tile * kThreads, p1 = std::min<int64_t>(p0 + kThreads, plane) - 1;  // positions [p0, p1]
    const int64_t pos = p0 + threadIdx.x;
    const bool live = pos < plane;
    const int y = live ? static_cast<int>(pos / d.w) : -1;  // -1: inside no extent
    const int x = live ? static_cast<int>(pos % d.w) : -1;
    // The tile's bounding box: one row segment, or whole rows when it wraps.
    const int ty0 = static_cast<int>(p0 / d.w), ty1 = static_cast<int>(p1 / d.w);
    const int tx0 = ty0 == ty1 ? static_cast<int>(p0 % d.w) : 0;
    const int tx1 = ty0 == ty1 ? static_cast<int>(p1 % d.w) : width - 1;
    const int cn = static_cast<int>(std::min<int64_t>(kGroup, d.c - c0));
    T acc[kGroup];
#pragma unroll
    for (int q = 0; q < kGroup; ++q) acc[q] = T(0);
    const int64_t end = bucket[b + 1];
    for (int64_t base = bucket[b]; base < end; base += kThreads) {
      // This chunk's rois that meet the tile, kept in roi order.
      const int64_t at = base + threadIdx.x;
      RoiInfo<T> ri;
      bool take = false;
      if (at < end) {
        ri = info[order[at]];
        take = ri.y0 <= ty1 && ri.y1 >= ty0 && ri.x0 <= tx1 && ri.x1 >= tx0;
      }
      const unsigned ballot = __ballot_sync(0xffffffffu, take);
      if (lane == 0) warp_taken[warp] = __popc(ballot);
      __syncthreads();
      int offset = 0, taken = 0;
#pragma unroll
      for (int w = 0; w < kThreads / 32; ++w) {
        offset += w < warp ? warp_taken[w] : 0;
        taken += warp_taken[w];
      }
      if (take) listed[offset + __popc(ballot & ((1u << lane) - 1u))] = ri;
      __syncthreads();
      for (int e = 0; e < taken; ++e) {
        const RoiInfo<T>& r = listed[e];
        if (y < r.y0 || y > r.y1 || x < r.x0 || x > r.x1) continue;
        const roi::AlignAxis<T> ay{r.y_start, r.y_bin, r.y_grid}, ax{r.x_start, r.x_bin, r.x_grid};
        const int2* yr = reach + static_cast<int64_t>(r.k) * (ph_count + pw_count);
        const int2* xr = yr + ph_count;
        const scalar_t* g = grad + (static_cast<int64_t>(r.k) * d.c + c0) * bins;
        T sum[kGroup];
#pragma unroll
        for (int q = 0; q < kGroup; ++q) sum[q] = T(0);
        for (int ph = 0; ph < ph_count; ++ph) {
          const int2 ry = yr[ph];
          if (y < ry.x || y > ry.y) continue;
          const T wy = roi::axis_weight(ay, ph, height, y);
          if (wy == T(0)) continue;
          T row[kGroup];
#pragma unroll
          for (int q = 0; q < kGroup; ++q) row[q] = T(0);
          for (int pw = 0; pw < pw_count; ++pw) {
            const int2 rx = xr[pw];
            if (x < rx.x || x > rx.y) continue;
            const T wx = roi::axis_weight(ax, pw, width, x);
            if (wx == T(0)) continue;
            const scalar_t* gq = g + ph * d.pw + pw;
#pragma unroll
            for (int q = 0; q < kGroup; ++q)
              if (q < cn) row[q] += wx * static_cast<T>(gq[q * bins]);
          }
#pragma unroll
          for (int q = 0; q < kGroup; ++q) sum[q] += wy * row[q];
        }
#pragma unroll
        for (int q = 0; q < kGroup; ++q) acc[q] += sum[q] / r.count;
      }
      __syncthreads();  // listed and warp_taken are rewritten by the next chunk
    }
    if (live) {
#pragma unroll
      for (int q = 0; q < kGroup; ++q)
        if (q < cn) grad_input[(b * d.c + c0 + q) * plane + pos] = static_cast<scalar_t>(acc[q]);
    }
  }
}

template <typename scalar_t>
void launch_align_forward(const at::Tensor& x, const at::Tensor& r, const Dims& d, double scale,
                          int64_t sampling_ratio, bool aligned, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = out.numel();
  roi_align_forward_kernel<scalar_t>
      <<<grid_stride_blocks(total, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), d, total, static_cast<T>(scale),
      int(sampling_ratio), aligned, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_align_backward_deterministic(const at::Tensor& g, const at::Tensor& r, const Dims& d, double scale,
                                         int64_t sampling_ratio, bool aligned, at::Tensor& grad_input) {
  using T = at::opmath_type<scalar_t>;
  const int64_t k_count = r.size(0);
  TORCH_CHECK(k_count < INT_MAX && d.n < INT_MAX,
              "the deterministic CUDA backward of roi_align takes fewer than 2^31 - 1 rois and images, got ",
              k_count, " rois and ", d.n, " images");
  TORCH_CHECK(d.h < (int64_t(1) << 30) && d.w < (int64_t(1) << 30),
              "the deterministic CUDA backward of roi_align takes height and width below 2^30, got ", d.h,
              " and ", d.w);
  TORCH_CHECK(d.ph + d.pw < INT_MAX,
              "the deterministic CUDA backward of roi_align takes output_size with height + width below 2^31 - 1, "
              "got ", d.ph, " and ", d.pw);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = r.options();
  // Scratch, sized from shapes only.
  at::Tensor info = at::empty({k_count * static_cast<int64_t>(sizeof(RoiInfo<T>))}, opts.dtype(at::kByte));
  at::Tensor reach = at::empty({k_count, d.ph + d.pw, 2}, opts.dtype(at::kInt));
  at::Tensor sort = at::empty({4, k_count}, opts.dtype(at::kInt));  // keys, order, sorted keys, sorted order
  at::Tensor bucket = at::empty({d.n + 1}, opts.dtype(at::kInt));
  auto* info_p = reinterpret_cast<RoiInfo<T>*>(info.mutable_data_ptr<uint8_t>());
  auto* reach_p = reinterpret_cast<int2*>(reach.mutable_data_ptr<int>());
  int* keys = sort.mutable_data_ptr<int>();
  int* order = keys + k_count;
  int* sorted_keys = order + k_count;
  int* sorted_order = sorted_keys + k_count;

  roi_align_prepare_kernel<scalar_t><<<grid_stride_blocks(k_count, kThreads), kThreads, 0, stream>>>(
      r.const_data_ptr<scalar_t>(), k_count, d, static_cast<T>(scale), int(sampling_ratio), aligned, info_p,
      reach_p, keys, order);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Keys are in [0, n]: sort on the bits that hold n.
  int end_bit = 1;
  while ((int64_t(1) << end_bit) <= d.n) ++end_bit;
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys, sorted_keys, order, sorted_order,
                                                 static_cast<int>(k_count), 0, end_bit, stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(std::max<size_t>(temp_bytes, 1))}, opts.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.mutable_data_ptr(), temp_bytes, keys, sorted_keys, order,
                                                 sorted_order, static_cast<int>(k_count), 0, end_bit, stream));

  roi_bucket_kernel<<<grid_stride_blocks(d.n + 1, kThreads), kThreads, 0, stream>>>(
      sorted_keys, static_cast<int>(k_count), static_cast<int>(d.n), bucket.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const int64_t tiles = ceil_div(d.h * d.w, kThreads);
  const int64_t groups = (d.c + kChannels<T> - 1) / kChannels<T>;
  const int64_t items = d.n * groups * tiles;
  roi_align_backward_gather_kernel<scalar_t><<<grid_stride_blocks(items, 1), kThreads, 0, stream>>>(
      g.const_data_ptr<scalar_t>(), info_p, reach_p, sorted_order, bucket.const_data_ptr<int>(), d, tiles, groups,
      items, grad_input.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_align_backward(const at::Tensor& g, const at::Tensor& r, const Dims& d, double scale,
                           int64_t sampling_ratio, bool aligned, bool deterministic, at::Tensor& grad_input) {
  using T = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  // torch.use_deterministic_algorithms(True) picks the gather too (also for scripted callers,
  // which cannot ask torch from TorchScript).
  if (deterministic || at::globalContext().deterministicAlgorithms()) {
    launch_align_backward_deterministic<scalar_t>(g, r, d, scale, sampling_ratio, aligned, grad_input);
    return;
  }
  // Atomics add in the opmath type: into grad_input itself for float/double, else a float buffer.
  at::Tensor acc = std::is_same_v<T, scalar_t>
                       ? grad_input
                       : at::zeros(grad_input.sizes(), grad_input.options().dtype(c10::CppTypeToScalarType<T>::value));
  if (std::is_same_v<T, scalar_t>) acc.zero_();
  const int64_t total = g.numel();
  roi_align_backward_atomic_kernel<scalar_t><<<grid_stride_blocks(total, kThreads), kThreads, 0, stream>>>(
      g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), d, total, static_cast<T>(scale),
      int(sampling_ratio), aligned, acc.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!std::is_same_v<T, scalar_t>) grad_input.copy_(acc);
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                          bool deterministic) {
  check_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const c10::cuda::CUDAGuard guard(input.device());
  const Dims d{input.size(0), input.size(1), input.size(2), input.size(3), pooled_height, pooled_width};
  auto out = empty_roi_output(input, rois, pooled_height, pooled_width);
  if (out.numel() == 0) return out;
  if (d.h == 0 || d.w == 0) return out.zero_();
  const auto x = input.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(x.scalar_type(), "roi_align_cuda", [&] {
    launch_align_forward<scalar_t>(x, r, d, spatial_scale, sampling_ratio, aligned, out);
  });
  return out;
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                                   int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                   bool aligned, bool deterministic) {
  check_roi_grad(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width);
  check_sampling_ratio(sampling_ratio);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto grad_input = at::empty({batch_size, channels, height, width}, grad.options());
  if (grad_input.numel() == 0) return grad_input;
  if (rois.size(0) == 0) return grad_input.zero_();
  const Dims d{batch_size, channels, height, width, pooled_height, pooled_width};
  const auto g = grad.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "roi_align_backward_cuda", [&] {
    launch_align_backward<scalar_t>(g, r, d, spatial_scale, sampling_ratio, aligned, deterministic, grad_input);
  });
  return grad_input;
}

// ---- RoI pool -------------------------------------------------------------------------------

template <typename scalar_t>
__global__ void roi_pool_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois, Dims d,
                                        int64_t total, at::opmath_type<scalar_t> scale, scalar_t* __restrict__ out,
                                        int* __restrict__ argmax) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Bin bin = bin_of(i, d);
    const scalar_t* r = rois + 5 * bin.k;
    const int64_t b = roi::batch_index(static_cast<T>(r[0]), d.n);
    int h0 = 0, h1 = 0, w0 = 0, w1 = 0;
    if (b >= 0) {
      roi::pool_bin(roi::pool_axis<T>(static_cast<T>(r[2]), static_cast<T>(r[4]), scale, int(d.ph)), bin.ph,
                    int(d.h), h0, h1);
      roi::pool_bin(roi::pool_axis<T>(static_cast<T>(r[1]), static_cast<T>(r[3]), scale, int(d.pw)), bin.pw,
                    int(d.w), w0, w1);
    }
    const bool empty = h1 <= h0 || w1 <= w0;
    T best = empty ? T(0) : roi::pool_init<T>();
    int arg = -1;
    if (!empty) {
      const scalar_t* plane = input + (b * d.c + bin.c) * d.h * d.w;
      for (int y = h0; y < h1; ++y) {
        for (int x = w0; x < w1; ++x) {
          const T v = static_cast<T>(plane[y * d.w + x]);
          if (v > best) {
            best = v;
            arg = static_cast<int>(y * d.w + x);
          }
        }
      }
    }
    out[i] = static_cast<scalar_t>(best);
    argmax[i] = arg;
  }
}

template <typename scalar_t>
__global__ void roi_pool_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                         const int* __restrict__ argmax, Dims d, int64_t total,
                                         at::opmath_type<scalar_t>* __restrict__ grad_input) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const Bin bin = bin_of(i, d);
    const int64_t b = roi::batch_index(static_cast<T>(rois[5 * bin.k]), d.n);
    const int a = argmax[i];
    if (b < 0 || a < 0 || a >= d.h * d.w) continue;
    atomicAdd(grad_input + (b * d.c + bin.c) * d.h * d.w + a, static_cast<T>(grad[i]));
  }
}

template <typename scalar_t>
void launch_pool_forward(const at::Tensor& x, const at::Tensor& r, const Dims& d, double scale, at::Tensor& out,
                         at::Tensor& argmax) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = out.numel();
  roi_pool_forward_kernel<scalar_t>
      <<<grid_stride_blocks(total, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), d, total, static_cast<T>(scale),
      out.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_pool_backward(const at::Tensor& g, const at::Tensor& r, const at::Tensor& argmax, const Dims& d,
                          at::Tensor& grad_input) {
  using T = at::opmath_type<scalar_t>;
  at::globalContext().alertNotDeterministic("fastmtl::_roi_pool_backward (CUDA)");
  at::Tensor acc = std::is_same_v<T, scalar_t>
                       ? grad_input
                       : at::zeros(grad_input.sizes(), grad_input.options().dtype(c10::CppTypeToScalarType<T>::value));
  const int64_t total = g.numel();
  roi_pool_backward_kernel<scalar_t>
      <<<grid_stride_blocks(total, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), argmax.const_data_ptr<int>(), d, total,
      acc.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!std::is_same_v<T, scalar_t>) grad_input.copy_(acc);
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const Dims d{input.size(0), input.size(1), input.size(2), input.size(3), pooled_height, pooled_width};
  auto out = empty_roi_output(input, rois, pooled_height, pooled_width);
  auto argmax = empty_roi_output(input, rois, pooled_height, pooled_width, at::kInt);
  if (out.numel() == 0) return {out, argmax};
  const auto x = input.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(x.scalar_type(), "roi_pool_cuda", [&] {
    launch_pool_forward<scalar_t>(x, r, d, spatial_scale, out, argmax);
  });
  return {out, argmax};
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_grad(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width);
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt && argmax.device() == grad.device(),
              "argmax must be int32 of the shape and device of grad ", grad.sizes(), ", got ", argmax.scalar_type(),
              " ", argmax.sizes());
  const c10::cuda::CUDAGuard guard(grad.device());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad_input.numel() == 0 || rois.size(0) == 0) return grad_input;
  const Dims d{batch_size, channels, height, width, pooled_height, pooled_width};
  const auto g = grad.contiguous(), r = rois.contiguous(), am = argmax.contiguous();
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "roi_pool_backward_cuda", [&] {
    launch_pool_backward<scalar_t>(g, r, am, d, grad_input);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("roi_pool", &roi_pool_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace fastmtl
