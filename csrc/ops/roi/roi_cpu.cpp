// CPU kernels of RoI align and RoI pool.
//
// RoI align works per axis (csrc/kernels/roi.h): a "plan" lists, for every roi and bin, the rows
// its samples read with their summed bilinear weights, and likewise the columns. It is built
// once per call and shared by every channel. A bin is then
//   out[ph, pw] = sum_x wx * (sum_y wy * plane[y, x]) / count:
// whole rows of the roi are interpolated first (unit-stride, vectorized), then each bin takes a
// few entries of them. The backward runs the same two steps transposed.
//
// Work is ordered plane by plane (image b, channel c), over the rois of image b, so that one
// plane stays in cache. The backward gives each thread whole planes: no two threads write the
// same element, and each element sums its terms in roi order whatever the thread count, so the
// result is deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../../kernels/roi.h"
#include "../common.h"
#include "roi.h"

namespace fastmtl {
namespace {

// (roi, channel) items per task of the forward: enough to amortize the hand-off.
constexpr int64_t kItemsPerTask = 16;

// The rois of each image: order[first[b] .. first[b + 1]) are the rois of image b, ascending.
struct RoisByImage {
  std::vector<int64_t> order, first;
};

// The image of every roi; each rois[k, 0] must name one.
template <typename scalar_t>
std::vector<int64_t> batch_indices(const scalar_t* rois, int64_t k_count, int64_t batch_size) {
  using T = at::opmath_type<scalar_t>;
  std::vector<int64_t> batch(k_count);
  for (int64_t k = 0; k < k_count; ++k) {
    const T v = static_cast<T>(rois[5 * k]);
    batch[k] = roi::batch_index(v, batch_size);
    TORCH_CHECK(batch[k] >= 0, "rois[", k, ", 0] = ", v, " is not a batch index of input (batch size ",
                batch_size, ")");
  }
  return batch;
}

// Sized by the batch: only for inputs with pixels (an empty map can have a huge batch).
template <typename scalar_t>
RoisByImage group_rois(const scalar_t* rois, int64_t k_count, int64_t batch_size) {
  RoisByImage g{std::vector<int64_t>(k_count), std::vector<int64_t>(batch_size + 1, 0)};
  const std::vector<int64_t> batch = batch_indices(rois, k_count, batch_size);
  for (int64_t k = 0; k < k_count; ++k) ++g.first[batch[k] + 1];
  for (int64_t b = 0; b < batch_size; ++b) g.first[b + 1] += g.first[b];
  std::vector<int64_t> next(g.first.begin(), g.first.end() - 1);
  for (int64_t k = 0; k < k_count; ++k) g.order[next[batch[k]]++] = k;  // stable: ascending k
  return g;
}

// ---- RoI align ------------------------------------------------------------------------------

template <typename T>
struct Tap {
  int idx;  // row (absolute) or column (relative to the roi's first column)
  T w;      // summed bilinear weight
};

template <typename T>
struct AlignPlan {
  int64_t pooled_h, pooled_w;
  std::vector<T> count;              // [K] divisor of each bin
  std::vector<T> grid_h, grid_w;     // [K] samples per bin along each axis (at least 1)
  std::vector<int> col0, cols;       // [K] first column read and number of columns (0: nothing read)
  std::vector<int64_t> yrange;       // [K, PH, 2] begin/end into ytaps
  std::vector<int64_t> xrange;       // [K, PW, 2] begin/end into xtaps
  std::vector<Tap<T>> ytaps, xtaps;  // rows: absolute; columns: relative to col0
};

// Taps of one axis of one roi, bin by bin, into out; equal neighbours merged. Returns the count.
template <typename T>
int64_t fill_axis(const roi::AlignAxis<T>& a, int pooled, int size, Tap<T>* out, int64_t base,
                  int64_t* range, int& lo, int& hi) {
  int64_t n = 0;
  for (int p = 0; p < pooled; ++p) {
    const int64_t begin = n;
    range[2 * int64_t(p)] = base + n;
    for (int i = 0; i < a.grid; ++i) {
      int t0, t1;
      T w0, w1;
      if (!roi::axis_taps(roi::sample_pos(a, p, i), size, t0, t1, w0, w1)) continue;
      for (const Tap<T> t : {Tap<T>{t0, w0}, Tap<T>{t1, w1}}) {
        if (n > begin && out[n - 1].idx == t.idx) {
          out[n - 1].w += t.w;
        } else {
          out[n++] = t;
        }
      }
      lo = std::min(lo, t0);
      hi = std::max(hi, t1);
    }
    range[2 * int64_t(p) + 1] = base + n;
  }
  return n;
}

template <typename scalar_t>
AlignPlan<at::opmath_type<scalar_t>> make_align_plan(const scalar_t* rois, int64_t k_count, int height, int width,
                                                     int ph_count, int pw_count, double spatial_scale,
                                                     int sampling_ratio, bool aligned) {
  using T = at::opmath_type<scalar_t>;
  AlignPlan<T> plan{ph_count, pw_count};
  plan.count.resize(k_count);
  plan.grid_h.resize(k_count);
  plan.grid_w.resize(k_count);
  plan.col0.resize(k_count);
  plan.cols.resize(k_count);
  plan.yrange.resize(k_count * ph_count * 2);
  plan.xrange.resize(k_count * pw_count * 2);
  std::vector<roi::AlignAxis<T>> ay(k_count), ax(k_count);
  std::vector<int64_t> ycap(k_count + 1, 0), xcap(k_count + 1, 0);
  const T scale = static_cast<T>(spatial_scale);
  for (int64_t k = 0; k < k_count; ++k) {
    const scalar_t* r = rois + 5 * k;
    ay[k] = roi::align_axis<T>(r[2], r[4], scale, ph_count, sampling_ratio, aligned);
    ax[k] = roi::align_axis<T>(r[1], r[3], scale, pw_count, sampling_ratio, aligned);
    plan.count[k] = roi::sample_count(ay[k], ax[k]);
    plan.grid_h[k] = static_cast<T>(std::max(ay[k].grid, 1));
    plan.grid_w[k] = static_cast<T>(std::max(ax[k].grid, 1));
    ycap[k + 1] = ycap[k] + 2 * int64_t(ph_count) * ay[k].grid;
    xcap[k + 1] = xcap[k] + 2 * int64_t(pw_count) * ax[k].grid;
  }
  plan.ytaps.resize(ycap[k_count]);
  plan.xtaps.resize(xcap[k_count]);
  at::parallel_for(0, k_count, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      int ylo = INT_MAX, yhi = -1, xlo = INT_MAX, xhi = -1;
      fill_axis(ay[k], ph_count, height, plan.ytaps.data() + ycap[k], ycap[k], &plan.yrange[k * ph_count * 2], ylo,
                yhi);
      const int64_t nx = fill_axis(ax[k], pw_count, width, plan.xtaps.data() + xcap[k], xcap[k],
                                   &plan.xrange[k * pw_count * 2], xlo, xhi);
      if (yhi < 0 || xhi < 0) {  // no sample in the map: the roi reads nothing
        plan.col0[k] = 0;
        plan.cols[k] = 0;
        continue;
      }
      plan.col0[k] = xlo;
      plan.cols[k] = xhi - xlo + 1;
      for (int64_t j = 0; j < nx; ++j) plan.xtaps[xcap[k] + j].idx -= xlo;
    }
  });
  return plan;
}

// Bin (ph, pw) summed again with each axis's weights divided by its grid first, for a bin whose
// fast sum overflowed (values near the float limit): every partial sum is then a weighted mean,
// bounded by the largest value read, so a finite answer stays finite.
template <typename scalar_t, typename T>
T align_bin_rescaled(const AlignPlan<T>& plan, int64_t k, const scalar_t* base, int width, int64_t ph,
                     int64_t pw) {
  const int64_t* yr = &plan.yrange[k * plan.pooled_h * 2];
  const int64_t* xr = &plan.xrange[k * plan.pooled_w * 2];
  T s = T(0);
  for (int64_t t = yr[2 * ph]; t < yr[2 * ph + 1]; ++t) {
    const scalar_t* src = base + int64_t(plan.ytaps[t].idx) * width;
    T row = T(0);
    for (int64_t u = xr[2 * pw]; u < xr[2 * pw + 1]; ++u)
      row += plan.xtaps[u].w / plan.grid_w[k] * static_cast<T>(src[plan.xtaps[u].idx]);
    s += plan.ytaps[t].w / plan.grid_h[k] * row;
  }
  return s;
}

// One roi on one plane: out[ph, pw] for every bin. rows is scratch of PH * cols.
template <typename scalar_t, typename T>
FASTMTL_CPU_CLONES void align_forward_item(const AlignPlan<T>& plan, int64_t k, const scalar_t* __restrict__ plane,
                                           int width, T* __restrict__ rows, scalar_t* __restrict__ out) {
  const int64_t ph_count = plan.pooled_h, pw_count = plan.pooled_w;
  const int cols = plan.cols[k];
  if (cols == 0) {
    for (int64_t i = 0; i < ph_count * pw_count; ++i) out[i] = scalar_t(0);
    return;
  }
  const scalar_t* base = plane + plan.col0[k];
  const int64_t* yr = &plan.yrange[k * ph_count * 2];
  const int64_t* xr = &plan.xrange[k * pw_count * 2];
  for (int64_t ph = 0; ph < ph_count; ++ph) {
    T* __restrict__ r = rows + ph * cols;
    for (int j = 0; j < cols; ++j) r[j] = T(0);
    for (int64_t t = yr[2 * ph]; t < yr[2 * ph + 1]; ++t) {
      const Tap<T> tap = plan.ytaps[t];
      const scalar_t* __restrict__ src = base + int64_t(tap.idx) * width;
      for (int j = 0; j < cols; ++j) r[j] += tap.w * static_cast<T>(src[j]);
    }
  }
  const T count = plan.count[k];
  for (int64_t ph = 0; ph < ph_count; ++ph) {
    const T* r = rows + ph * cols;
    for (int64_t pw = 0; pw < pw_count; ++pw) {
      T s = T(0);
      for (int64_t t = xr[2 * pw]; t < xr[2 * pw + 1]; ++t) s += plan.xtaps[t].w * r[plan.xtaps[t].idx];
      s /= count;
      if (!std::isfinite(s)) s = align_bin_rescaled(plan, k, base, width, ph, pw);
      out[ph * pw_count + pw] = static_cast<scalar_t>(s);
    }
  }
}

// One roi's gradient into one plane. q is scratch of PH * cols.
template <typename scalar_t, typename T>
FASTMTL_CPU_CLONES void align_backward_item(const AlignPlan<T>& plan, int64_t k, const scalar_t* __restrict__ grad,
                                            int width, T* __restrict__ q, T* __restrict__ plane) {
  const int64_t ph_count = plan.pooled_h, pw_count = plan.pooled_w;
  const int cols = plan.cols[k];
  if (cols == 0) return;
  const int64_t* yr = &plan.yrange[k * ph_count * 2];
  const int64_t* xr = &plan.xrange[k * pw_count * 2];
  const T count = plan.count[k];
  for (int64_t i = 0; i < ph_count * cols; ++i) q[i] = T(0);
  for (int64_t ph = 0; ph < ph_count; ++ph) {
    T* r = q + ph * cols;
    for (int64_t pw = 0; pw < pw_count; ++pw) {
      const T g = static_cast<T>(grad[ph * pw_count + pw]) / count;
      for (int64_t t = xr[2 * pw]; t < xr[2 * pw + 1]; ++t) r[plan.xtaps[t].idx] += plan.xtaps[t].w * g;
    }
  }
  T* base = plane + plan.col0[k];
  for (int64_t ph = 0; ph < ph_count; ++ph) {
    const T* __restrict__ r = q + ph * cols;
    for (int64_t t = yr[2 * ph]; t < yr[2 * ph + 1]; ++t) {
      const Tap<T> tap = plan.ytaps[t];
      T* __restrict__ dst = base + int64_t(tap.idx) * width;
      for (int j = 0; j < cols; ++j) dst[j] += tap.w * r[j];
    }
  }
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                         int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned,
                         bool deterministic) {
  check_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  check_sampling_ratio(sampling_ratio);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  auto out = empty_roi_output(input, rois, pooled_height, pooled_width);
  if (out.numel() == 0) return out;
  // A channels_last input is copied to NCHW here (one pass over the input), as torchvision does.
  const auto x = input.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(x.scalar_type(), "roi_align_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    if (h == 0 || w == 0) {  // no pixels: every bin is 0
      batch_indices(rp, k, n);
      out.zero_();
      return;
    }
    const RoisByImage by_image = group_rois(rp, k, n);
    const auto plan = make_align_plan(rp, k, int(h), int(w), int(pooled_height), int(pooled_width), spatial_scale,
                                      int(sampling_ratio), aligned);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const int64_t bins = pooled_height * pooled_width;
    // Item i = (channel i / K, i % K-th roi in image order): neighbours share a plane.
    at::parallel_for(0, c * k, kItemsPerTask, [&](int64_t begin, int64_t end) {
      std::vector<T> rows(pooled_height * w);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t ch = i / k, roi = by_image.order[i % k];
        const int64_t b = roi::batch_index(static_cast<T>(rp[5 * roi]), n);
        align_forward_item(plan, roi, xp + (b * c + ch) * h * w, int(w), rows.data(), op + (roi * c + ch) * bins);
      }
    });
  });
  return out;
}

// Runs body(acc) with an accumulator of the input gradient, in the opmath type, and returns the
// gradient in scalar_t: grad_input itself for float/double (zeroed if the caller allocated it
// with at::zeros), a zeroed float buffer for half types.
template <typename scalar_t, typename F>
void with_accumulator(at::Tensor& grad_input, F&& body) {
  using T = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<T, scalar_t>) {
    body(grad_input.mutable_data_ptr<T>());
  } else {
    at::Tensor acc = at::zeros(grad_input.sizes(), grad_input.options().dtype(c10::CppTypeToScalarType<T>::value));
    body(acc.mutable_data_ptr<T>());
    grad_input.copy_(acc);
  }
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool deterministic) {
  check_roi_grad(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width);
  check_sampling_ratio(sampling_ratio);
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  const int64_t k = rois.size(0);
  if (grad_input.numel() == 0 || k == 0) return grad_input;
  const auto g = grad.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "roi_align_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    const RoisByImage by_image = group_rois(rp, k, batch_size);
    const auto plan = make_align_plan(rp, k, int(height), int(width), int(pooled_height), int(pooled_width),
                                      spatial_scale, int(sampling_ratio), aligned);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int64_t bins = pooled_height * pooled_width, plane = height * width;
    with_accumulator<scalar_t>(grad_input, [&](T* acc) {
      at::parallel_for(0, batch_size * channels, 1, [&](int64_t begin, int64_t end) {
        std::vector<T> q(pooled_height * width);
        for (int64_t p = begin; p < end; ++p) {
          const int64_t b = p / channels, ch = p % channels;
          for (int64_t j = by_image.first[b]; j < by_image.first[b + 1]; ++j) {
            const int64_t roi = by_image.order[j];
            align_backward_item(plan, roi, gp + (roi * channels + ch) * bins, int(width), q.data(), acc + p * plane);
          }
        }
      });
    });
  });
  return grad_input;
}

// ---- RoI pool -------------------------------------------------------------------------------
//
// The forward scans tiny bins (a few cells each) of every (roi, channel). One (roi, channel) at a
// time, a bin is a short scalar loop of unpredictable compares. Instead the input is packed
// channels-last, [N, H, W, C rounded up to kPoolBlock], and a bin is scanned once per block of
// kPoolBlock channels: every cell is a few vectors of channels, max and argmax kept with selects.
// Packing costs one pass over the input, so few rois on a large map (bins reading less than a
// quarter of it) keep the plane-by-plane scan. The outputs themselves ([K, C, PH, PW] values and
// int32 argmax, written once) are then most of the time.

// Channels per block: one cache line of floats per cell; the running max and argmax of a block
// stay in vector registers.
constexpr int64_t kPoolBlock = 16;

// Cells [h0, h1) x [w0, w1) of every bin of every roi: [K, PH, PW, 4].
template <typename scalar_t>
std::vector<int> make_pool_bins(const scalar_t* rois, int64_t k_count, int height, int width, int ph_count,
                                int pw_count, double spatial_scale) {
  using T = at::opmath_type<scalar_t>;
  std::vector<int> bins(k_count * ph_count * pw_count * 4);
  const T scale = static_cast<T>(spatial_scale);
  for (int64_t k = 0; k < k_count; ++k) {
    const scalar_t* r = rois + 5 * k;
    const auto ay = roi::pool_axis<T>(r[2], r[4], scale, ph_count);
    const auto ax = roi::pool_axis<T>(r[1], r[3], scale, pw_count);
    int* out = &bins[k * ph_count * pw_count * 4];
    for (int ph = 0; ph < ph_count; ++ph) {
      for (int pw = 0; pw < pw_count; ++pw, out += 4) {
        roi::pool_bin(ay, ph, height, out[0], out[1]);
        roi::pool_bin(ax, pw, width, out[2], out[3]);
      }
    }
  }
  return bins;
}

// Cells read by all the bins together (overlaps counted twice), per channel.
int64_t pool_cells(const std::vector<int>& bins) {
  int64_t cells = 0;
  for (size_t i = 0; i < bins.size(); i += 4) {
    cells += int64_t(std::max(bins[i + 1] - bins[i], 0)) * std::max(bins[i + 3] - bins[i + 2], 0);
  }
  return cells;
}

// Channels [c0, c0 + kPoolBlock) of one image (planes of hw cells) into dst[p * stride + c], as
// T; channels past c_count are zero (scanned, never written out).
template <typename scalar_t, typename T>
void pack_pool_block(const scalar_t* image, int64_t c_count, int64_t c0, int64_t hw, int64_t stride,
                     T* __restrict__ dst) {
  for (int64_t c = 0; c < kPoolBlock; ++c) {
    if (c0 + c >= c_count) {
      for (int64_t p = 0; p < hw; ++p) dst[p * stride + c] = T(0);
      continue;
    }
    const scalar_t* __restrict__ src = image + (c0 + c) * hw;
    for (int64_t p = 0; p < hw; ++p) dst[p * stride + c] = static_cast<T>(src[p]);
  }
}

// Channels as 16-byte GCC/Clang vectors (lane-wise compares and selects; SSE2 has them, and
// wider generic vectors fall back to scalar code), and argmax lanes as integers of the same width,
// which selects need. A packed block is kPoolBlock / lanes of them.
template <typename T>
struct PoolLanes;
template <>
struct PoolLanes<float> {
  typedef float Value __attribute__((vector_size(16)));
  typedef int32_t Index __attribute__((vector_size(16)));
};
template <>
struct PoolLanes<double> {
  typedef double Value __attribute__((vector_size(16)));
  typedef int64_t Index __attribute__((vector_size(16)));
};

// One roi on one packed block of channels: every bin's max and argmax for the block's first nc
// channels into out / arg, channel c at c * nbins. Cells are scanned in row-major order with
// pool_take on whole vectors, so ties and NaN go as in the scalar scan.
template <typename scalar_t, typename T>
FASTMTL_CPU_CLONES void pool_block_item(const int* bins, int64_t nbins, const T* __restrict__ block, int width,
                                        int64_t stride, int64_t nc, scalar_t* __restrict__ out, int* __restrict__ arg) {
  using V = typename PoolLanes<T>::Value;
  using I = typename PoolLanes<T>::Index;
  constexpr int64_t lanes = sizeof(V) / sizeof(T), vecs = kPoolBlock / lanes;
  for (int64_t j = 0; j < nbins; ++j, bins += 4) {
    const bool empty = bins[1] <= bins[0] || bins[3] <= bins[2];
    V best[vecs];
    I at[vecs];
    for (int64_t i = 0; i < vecs; ++i) {
      best[i] = V{} + (empty ? T(0) : roi::pool_init<T>());
      at[i] = I{} - 1;
    }
    for (int y = bins[0]; y < bins[1]; ++y) {
      for (int x = bins[2]; x < bins[3]; ++x) {
        const int idx = y * width + x;
        const T* cell = block + int64_t(idx) * stride;
        for (int64_t i = 0; i < vecs; ++i) {
          V v;
          std::memcpy(&v, cell + i * lanes, sizeof(V));
          roi::pool_take(v, I{} + idx, best[i], at[i]);
        }
      }
    }
    for (int64_t c = 0; c < nc; ++c) {
      out[c * nbins + j] = static_cast<scalar_t>(best[c / lanes][c % lanes]);
      arg[c * nbins + j] = static_cast<int>(at[c / lanes][c % lanes]);
    }
  }
}

// One roi on one plane, one channel: the scan for when packing does not pay.
template <typename scalar_t, typename T>
void pool_plane_item(const int* bins, int64_t nbins, const scalar_t* __restrict__ plane, int width,
                     scalar_t* __restrict__ out, int* __restrict__ arg) {
  for (int64_t j = 0; j < nbins; ++j, bins += 4) {
    const bool empty = bins[1] <= bins[0] || bins[3] <= bins[2];
    T best = empty ? T(0) : roi::pool_init<T>();
    int at = -1;
    for (int y = bins[0]; y < bins[1]; ++y) {
      for (int x = bins[2]; x < bins[3]; ++x) {
        roi::pool_take(static_cast<T>(plane[y * width + x]), y * width + x, best, at);
      }
    }
    out[j] = static_cast<scalar_t>(best);
    arg[j] = at;
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  check_roi_args(input, rois, spatial_scale, pooled_height, pooled_width);
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  auto out = empty_roi_output(input, rois, pooled_height, pooled_width);
  auto argmax = empty_roi_output(input, rois, pooled_height, pooled_width, at::kInt);
  if (out.numel() == 0) return {out, argmax};
  const auto x = input.contiguous(), r = rois.contiguous();
  FASTMTL_DISPATCH_BOXES(x.scalar_type(), "roi_pool_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* rp = r.const_data_ptr<scalar_t>();
    if (h == 0 || w == 0) {  // every bin is empty: 0 and argmax -1, without indexing an empty map
      batch_indices(rp, k, n);
      out.zero_();
      argmax.fill_(-1);
      return;
    }
    const RoisByImage by_image = group_rois(rp, k, n);  // checks the batch indices
    const std::vector<int> bins = make_pool_bins(rp, k, int(h), int(w), int(pooled_height), int(pooled_width),
                                                 spatial_scale);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    int* ap = argmax.mutable_data_ptr<int>();
    const int64_t nbins = pooled_height * pooled_width, hw = h * w;
    auto image_of = [&](int64_t roi) { return roi::batch_index(static_cast<T>(rp[5 * roi]), n); };
    if (4 * pool_cells(bins) < n * hw) {
      // Item i = (channel i / K, i % K-th roi in image order): neighbours share a plane.
      at::parallel_for(0, c * k, kItemsPerTask, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t ch = i / k, roi = by_image.order[i % k], o = (roi * c + ch) * nbins;
          pool_plane_item<scalar_t, T>(&bins[roi * nbins * 4], nbins, xp + (image_of(roi) * c + ch) * hw, int(w),
                                       op + o, ap + o);
        }
      });
      return;
    }
    const int64_t blocks = (c + kPoolBlock - 1) / kPoolBlock, stride = blocks * kPoolBlock;
    std::vector<T> packed(n * hw * stride);
    at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / blocks, c0 = (i % blocks) * kPoolBlock;
        pack_pool_block(xp + b * c * hw, c, c0, hw, stride, &packed[b * hw * stride + c0]);
      }
    });
    // Item i = (roi i / blocks, block i % blocks): the outputs are written in memory order (they
    // are the bulk of the traffic); the packed input (N * C * H * W values) is re-read from cache.
    at::parallel_for(0, k * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t roi = i / blocks, blk = i % blocks, c0 = blk * kPoolBlock;
        const int64_t o = (roi * c + c0) * nbins;
        pool_block_item<scalar_t, T>(&bins[roi * nbins * 4], nbins, &packed[image_of(roi) * hw * stride + c0],
                                     int(w), stride, std::min(kPoolBlock, c - c0), op + o, ap + o);
      }
    });
  });
  return {out, argmax};
}

// Planes per task of the backward: enough that a task reads whole chunks of grad and argmax
// (planes * PH * PW contiguous values per roi), few enough that its planes stay in L2 (~256 KiB).
int64_t pool_planes_per_task(int64_t plane_bytes, int64_t channels) {
  return std::clamp<int64_t>((int64_t(256) << 10) / std::max<int64_t>(plane_bytes, 1), 1, channels);
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_roi_grad(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width);
  TORCH_CHECK(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt,
              "argmax must be int32 of the shape of grad ", grad.sizes(), ", got ", argmax.scalar_type(), " ",
              argmax.sizes());
  // Not zeroed here: each task zeroes the planes it owns just before adding into them (in
  // parallel, and the planes are then in cache).
  auto grad_input = at::empty({batch_size, channels, height, width}, grad.options());
  const int64_t k = rois.size(0);
  if (grad_input.numel() == 0 || k == 0) return grad_input.zero_();
  const auto g = grad.contiguous(), r = rois.contiguous(), am = argmax.contiguous();
  FASTMTL_DISPATCH_BOXES(g.scalar_type(), "roi_pool_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const RoisByImage by_image = group_rois(r.const_data_ptr<scalar_t>(), k, batch_size);
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const int* ap = am.const_data_ptr<int>();
    const int64_t nbins = pooled_height * pooled_width, plane = height * width;
    const int64_t per_task = pool_planes_per_task(plane * int64_t(sizeof(T)), channels);
    const int64_t tasks_per_image = (channels + per_task - 1) / per_task;
    with_accumulator<scalar_t>(grad_input, [&](T* acc) {
      // Task t = planes [c0, c1) of image t / tasks_per_image. Each thread owns whole planes, and
      // an element sums its terms in roi order, then bin order, as torchvision: deterministic.
      at::parallel_for(0, batch_size * tasks_per_image, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t b = t / tasks_per_image, c0 = (t % tasks_per_image) * per_task;
          const int64_t c1 = std::min(c0 + per_task, channels);
          T* planes = acc + (b * channels + c0) * plane;
          std::fill(planes, planes + (c1 - c0) * plane, T(0));
          for (int64_t j = by_image.first[b]; j < by_image.first[b + 1]; ++j) {
            const int64_t off = (by_image.order[j] * channels + c0) * nbins;
            for (int64_t ch = 0; ch < c1 - c0; ++ch) {
              T* dst = planes + ch * plane;
              for (int64_t i = ch * nbins; i < (ch + 1) * nbins; ++i) {
                const int a = ap[off + i];
                if (a >= 0 && a < plane) dst[a] += static_cast<T>(gp[off + i]);
              }
            }
          }
        }
      });
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("roi_pool", &roi_pool_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace fastmtl
