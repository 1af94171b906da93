#pragma once
// Torch-free per-element math of RoI align and RoI pool, shared by the CPU and CUDA kernels so
// that the CPU tests exercise the arithmetic the GPU runs. Semantics are torchvision's:
//
// RoI align (Mask R-CNN). A roi (b, x1, y1, x2, y2) is scaled by spatial_scale and shifted by
// -0.5 when aligned; when not aligned its width and height are raised to at least 1. It is cut
// into pooled_h x pooled_w bins; bin (ph, pw) averages grid_h x grid_w bilinear samples at
//   y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h     (x likewise)
// with grid = sampling_ratio when > 0, else ceil(roi size / pooled size). A sample with
// y < -1, y > H, x < -1 or x > W contributes 0; otherwise y (x) is clamped to >= 0, and a
// sample at or past the last row (column) reads that row (column) only. The average divides by
// max(grid_h * grid_w, 1), out-of-map samples included.
//
// The bilinear weights are separable: a sample's four taps are the products of a row pair
// (y_low, hy), (y_high, ly) and a column pair (x_low, hx), (x_high, lx), and a sample is in the
// map exactly when its y and its x are. So the kernels work per axis (axis_taps below): the CPU
// kernel interpolates whole rows first, the CUDA kernel multiplies the two pairs per sample.
//
// RoI pool (Fast R-CNN). Corners are rounded (half away from zero) after scaling; the roi spans
// max(end - start + 1, 1) cells per axis, and bin (ph, pw) covers rows
// [floor(ph * bin_h), ceil((ph + 1) * bin_h)) offset by start_h and clipped to [0, H] (columns
// likewise). An empty bin gives 0 and argmax -1; otherwise the max (first one in row-major
// order on ties, NaN never taken) and its index h * W + w in the plane.

#include <cmath>
#include <cstdint>

#include "hd.h"

namespace fastmtl {
namespace roi {

using std::ceil;
using std::floor;
using std::round;

// Batch index of a roi: the first column truncated toward zero (as torchvision's int cast), or -1
// when it does not name an image in [0, batch_size) (NaN included).
template <typename T>
FASTMTL_HD int64_t batch_index(T value, int64_t batch_size) {
  if (!(value > T(-1) && value < static_cast<T>(batch_size))) return -1;  // NaN fails too
  return static_cast<int64_t>(value);
}

// Adaptive grids are capped so that an absurd roi (1e30 pixels) cannot overflow the int; the cap
// is far above any real feature map (a bin would span 2^20 pixels).
constexpr int kMaxGrid = 1 << 20;

// An explicit sampling_ratio takes at most 2^10 samples per bin axis: a bin then costs at most
// 2^20 bilinear samples (the CUDA kernels visit every pair), where 2^20 per axis would be 2^40.
constexpr int kMaxSamplingRatio = 1 << 10;

// One axis of a roi in RoI align: where the samples of bin p sit.
template <typename T>
struct AlignAxis {
  T start;  // roi start in feature-map pixels
  T bin;    // bin size
  int grid; // samples per bin along this axis (>= 0)
};

template <typename T>
FASTMTL_HD AlignAxis<T> align_axis(T lo, T hi, T spatial_scale, int pooled, int sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start = lo * spatial_scale - offset;
  const T end = hi * spatial_scale - offset;
  T size = end - start;
  if (!aligned) size = size > T(1) ? size : T(1);
  const T bin = size / static_cast<T>(pooled);
  int grid = sampling_ratio;
  if (sampling_ratio <= 0) {
    const T g = ceil(size / static_cast<T>(pooled));
    // !(g > 0): negative (aligned, inverted roi) or NaN -> no samples
    grid = !(g > T(0)) ? 0 : (g >= static_cast<T>(kMaxGrid) ? kMaxGrid : static_cast<int>(g));
  }
  return {start, bin, grid};
}

// Position of sample i of bin p, with torchvision's order of operations (bit-identical in float32).
template <typename T>
FASTMTL_HD T sample_pos(const AlignAxis<T>& a, int p, int i) {
  return a.start + static_cast<T>(p) * a.bin +
         static_cast<T>(static_cast<float>(i) + 0.5f) * a.bin / static_cast<T>(a.grid);
}

// The divisor of a bin's sum: max(grid_h * grid_w, 1).
template <typename T>
FASTMTL_HD T sample_count(const AlignAxis<T>& ay, const AlignAxis<T>& ax) {
  const int64_t n = static_cast<int64_t>(ay.grid) * ax.grid;
  return static_cast<T>(n > 0 ? n : 1);
}

// The two taps of a bilinear sample along one axis of `size` pixels: pixel lo with weight wlo,
// pixel hi with weight whi (wlo + whi == 1). False (taps untouched) when the sample is outside
// [-1, size] or NaN: then the whole sample contributes nothing.
template <typename T>
FASTMTL_HD bool axis_taps(T v, int size, int& lo, int& hi, T& wlo, T& whi) {
  if (!(v >= T(-1) && v <= static_cast<T>(size))) return false;
  if (v <= T(0)) v = T(0);
  lo = static_cast<int>(v);
  if (lo >= size - 1) {
    lo = hi = size - 1;
    v = static_cast<T>(lo);
  } else {
    hi = lo + 1;
  }
  whi = v - static_cast<T>(lo);
  wlo = T(1) - whi;
  return true;
}

// Pixels [first, last] along one axis that the taps of bin p's samples can touch (first > last:
// none). Exact, not a heuristic: for a fixed p, sample_pos is (start + p * bin) + ((i + 0.5) *
// bin) / grid, each step a correctly rounded monotone function of i, so the computed positions of
// the bin are monotone in i (non-decreasing for bin >= 0, non-increasing for bin < 0) and its first
// and last samples bound the rest. A sample taken (v in [-1, size]) touches
// min(floor(max(v, 0)), size - 1) and at most the pixel after it, so the bin touches
// [min(floor(max(v_min, 0)), size - 1), min(floor(v_max) + 1, size - 1)], and nothing when
// v_max < -1 or v_min > size (no sample taken). Positions are NaN for all samples of a bin or for
// none; a NaN bin gets the whole axis (it takes no sample, so this only costs time).
// Requires size < 2^30 (the int conversions fit).
template <typename T>
FASTMTL_HD void align_bin_reach(const AlignAxis<T>& a, int p, int size, int& first, int& last) {
  first = 0;
  last = -1;
  if (a.grid <= 0 || size <= 0) return;
  const T v0 = sample_pos(a, p, 0), v1 = sample_pos(a, p, a.grid - 1);
  if (!(v0 == v0 && v1 == v1)) {
    last = size - 1;
    return;
  }
  const T lo = v0 < v1 ? v0 : v1, hi = v0 < v1 ? v1 : v0;
  const T top = static_cast<T>(size);
  if (hi < T(-1) || lo > top) return;  // every sample is off the map
  const int f = lo > T(0) ? static_cast<int>(lo) : 0;                // lo <= top here
  const int l = (hi < top ? static_cast<int>(hi > T(0) ? hi : T(0)) : size) + 1;
  first = f < size - 1 ? f : size - 1;
  last = l < size - 1 ? l : size - 1;
}

// Summed tap weight of `pixel` (in [0, size)) in the samples of bin p along one axis: the sum, in
// ascending sample order, of w_lo over the samples whose low tap is the pixel and w_hi over those
// whose high tap is (both for a sample clamped to the last pixel). Visits only the samples that can
// touch the pixel, found by bisection, yet returns the bits of the plain loop over all samples:
//  - a sample with a tap of nonzero weight on `pixel` lies in [pixel - 1, pixel + 1] (v in
//    [-1, 0) reads pixel 0 with weight 1 and pixel 1 with weight 0; otherwise the low tap is
//    floor(v), and the last pixel also takes v in [size - 1, size]);
//  - the samples outside that window add only +0 or nothing, and s + (+0) == s here since every
//    weight is >= +0, so s is never -0;
//  - the window bounds rounded to T keep every float inside them (rounding is monotone), and the
//    positions of a bin are monotone in the sample index (align_bin_reach), so the samples in the
//    window are consecutive: bisect for the first, stop after the last.
template <typename T>
FASTMTL_HD T axis_weight(const AlignAxis<T>& a, int p, int size, int pixel) {
  const T lo_v = static_cast<T>(pixel - 1), hi_v = static_cast<T>(pixel + 1);
  const bool up = !(a.bin < T(0));
  int first = 0, count = a.grid;  // lower bound: the first sample not before the window
  while (count > 0) {
    const int half = count / 2, mid = first + half;
    const T v = sample_pos(a, p, mid);
    if (up ? v < lo_v : v > hi_v) {
      first = mid + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  T s = T(0);
  for (int i = first; i < a.grid; ++i) {
    const T v = sample_pos(a, p, i);
    if (!(v >= lo_v && v <= hi_v)) break;  // past the window (NaN: no sample is taken)
    int t0, t1;
    T w0, w1;
    if (!axis_taps(v, size, t0, t1, w0, w1)) continue;
    if (t0 == pixel) s += w0;
    if (t1 == pixel) s += w1;
  }
  return s;
}

// ---- RoI pool ---------------------------------------------------------------------------------

// One axis of a roi in RoI pool.
template <typename T>
struct PoolAxis {
  int start;  // rounded start cell
  T bin;      // bin size in cells
};

// round() after scaling, clamped into int range first (NaN -> an empty roi far off the map).
template <typename T>
FASTMTL_HD int round_cell(T v) {
  const T r = round(v);
  const T big = T(1 << 30);
  return !(r > -big) ? -(1 << 30) : (r < big ? static_cast<int>(r) : (1 << 30));
}

template <typename T>
FASTMTL_HD PoolAxis<T> pool_axis(T lo, T hi, T spatial_scale, int pooled) {
  const int start = round_cell(lo * spatial_scale);
  const int end = round_cell(hi * spatial_scale);
  const int64_t cells = static_cast<int64_t>(end) - start + 1;
  const T size = static_cast<T>(cells > 1 ? cells : 1);
  return {start, size / static_cast<T>(pooled)};
}

// Cells [first, last) of bin p, clipped to [0, size].
template <typename T>
FASTMTL_HD void pool_bin(const PoolAxis<T>& a, int p, int size, int& first, int& last) {
  int64_t f = static_cast<int64_t>(floor(static_cast<T>(p) * a.bin)) + a.start;
  int64_t l = static_cast<int64_t>(ceil(static_cast<T>(p + 1) * a.bin)) + a.start;
  f = f < 0 ? 0 : (f > size ? size : f);
  l = l < 0 ? 0 : (l > size ? size : l);
  first = static_cast<int>(f);
  last = static_cast<int>(l);
}

// The value a non-empty bin starts its max from, as torchvision (-FLT_MAX in every dtype).
template <typename T>
FASTMTL_HD T pool_init() { return static_cast<T>(-3.402823466e+38f); }

// One cell (value v at plane index idx) of a bin's max scan, in row-major order: taken only when
// strictly greater, as torchvision's `>`, so the first maximum wins ties and NaN is never taken.
// Selects rather than a branch; V / I may also be GCC vectors of channels (the CPU kernel), I of
// lanes as wide as V's, whose comparison masks then select lane by lane.
template <typename V, typename I>
FASTMTL_HD void pool_take(V v, I idx, V& best, I& arg) {
  const auto take = v > best;
  best = take ? v : best;
  arg = take ? idx : arg;
}

}  // namespace roi
}  // namespace fastmtl
