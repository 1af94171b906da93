// CUDA kernels of RoI align and RoI pool, one thread per element, math from csrc/kernels/roi.h.
//
// Forward: one thread per output element. Backward: one thread per incoming gradient element,
// scattering with atomicAdd (fast; the order of the adds, so the rounding, varies from run to
// run). roi_align also has a deterministic backward: one thread per input element gathers, in
// roi order, the terms of every roi of its image whose samples can reach it.
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

#include <algorithm>
#include <type_traits>

#include "../../kernels/roi.h"
#include "../common.h"
#include "roi.h"

namespace fastmtl {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 30); }

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
    T sum = T(0);
    for_each_tap(ay, ax, bin, d, [&](int64_t at, T w) { sum += w * static_cast<T>(plane[at]); });
    out[i] = static_cast<scalar_t>(sum / roi::sample_count(ay, ax));
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

// Weight of pixel `at` in the samples of bin p along one axis: the sum of its tap weights.
template <typename T>
__device__ __forceinline__ T axis_weight_at(const roi::AlignAxis<T>& a, int p, int size, int pixel) {
  T s = T(0);
  for (int i = 0; i < a.grid; ++i) {
    int t0, t1;
    T w0, w1;
    if (!roi::axis_taps(roi::sample_pos(a, p, i), size, t0, t1, w0, w1)) continue;
    if (t0 == pixel) s += w0;
    if (t1 == pixel) s += w1;
  }
  return s;
}

// Gather: thread i owns input element (b, c, y, x) and sums, roi by roi in index order, the terms
// sum_{ph, pw} grad[k, c, ph, pw] * Wy[ph](y) * Wx[pw](x) / count. No atomics: deterministic.
template <typename scalar_t>
__global__ void roi_align_backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                                 int64_t k_count, Dims d, int64_t total,
                                                 at::opmath_type<scalar_t> scale, int sampling_ratio, bool aligned,
                                                 scalar_t* __restrict__ grad_input) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int x = static_cast<int>(i % d.w);
    const int y = static_cast<int>((i / d.w) % d.h);
    const int64_t c = (i / (d.w * d.h)) % d.c;
    const int64_t b = i / (d.w * d.h * d.c);
    T acc = T(0);
    for (int64_t k = 0; k < k_count; ++k) {
      const scalar_t* r = rois + 5 * k;
      if (roi::batch_index(static_cast<T>(r[0]), d.n) != b) continue;
      roi::AlignAxis<T> ay, ax;
      align_axes(r, scale, d, sampling_ratio, aligned, ay, ax);
      int y_first, y_last, x_first, x_last;
      roi::align_reach(ay, int(d.ph), int(d.h), y_first, y_last);
      roi::align_reach(ax, int(d.pw), int(d.w), x_first, x_last);
      if (y < y_first || y > y_last || x < x_first || x > x_last) continue;
      const scalar_t* g = grad + (k * d.c + c) * d.ph * d.pw;
      T sum = T(0);
      for (int ph = 0; ph < d.ph; ++ph) {
        const T wy = axis_weight_at(ay, ph, int(d.h), y);
        if (wy == T(0)) continue;
        T row = T(0);
        for (int pw = 0; pw < d.pw; ++pw) {
          const T wx = axis_weight_at(ax, pw, int(d.w), x);
          if (wx != T(0)) row += wx * static_cast<T>(g[ph * d.pw + pw]);
        }
        sum += wy * row;
      }
      acc += sum / roi::sample_count(ay, ax);
    }
    grad_input[i] = static_cast<scalar_t>(acc);
  }
}

template <typename scalar_t>
void launch_align_forward(const at::Tensor& x, const at::Tensor& r, const Dims& d, double scale,
                          int64_t sampling_ratio, bool aligned, at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const int64_t total = out.numel();
  roi_align_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), d, total, static_cast<T>(scale),
      int(sampling_ratio), aligned, out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_align_backward(const at::Tensor& g, const at::Tensor& r, const Dims& d, double scale,
                           int64_t sampling_ratio, bool aligned, bool deterministic, at::Tensor& grad_input) {
  using T = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (deterministic) {
    const int64_t total = grad_input.numel();
    roi_align_backward_gather_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), r.size(0), d, total, static_cast<T>(scale),
        int(sampling_ratio), aligned, grad_input.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  at::globalContext().alertNotDeterministic("fastmtl::_roi_align_backward (CUDA, deterministic=False)");
  // Atomics add in the opmath type: into grad_input itself for float/double, else a float buffer.
  at::Tensor acc = std::is_same_v<T, scalar_t>
                       ? grad_input
                       : at::zeros(grad_input.sizes(), grad_input.options().dtype(c10::CppTypeToScalarType<T>::value));
  if (std::is_same_v<T, scalar_t>) acc.zero_();
  const int64_t total = g.numel();
  roi_align_backward_atomic_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
      g.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(), d, total, static_cast<T>(scale),
      int(sampling_ratio), aligned, acc.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!std::is_same_v<T, scalar_t>) grad_input.copy_(acc);
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                          bool deterministic) {
  check_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(input.device());
  const Dims d{input.size(0), input.size(1), input.size(2), input.size(3), pooled_height, pooled_width};
  auto out = at::empty({rois.size(0), d.c, pooled_height, pooled_width}, input.options());
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
  roi_pool_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
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
  roi_pool_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
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
  auto out = at::empty({rois.size(0), d.c, pooled_height, pooled_width}, input.options());
  auto argmax = at::empty(out.sizes(), input.options().dtype(at::kInt));
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
