// Schemas and argument checks of RoI align and RoI pool (the calls of torchvision's ops, plus a
// `deterministic` flag that picks roi_align's CUDA backward).
#include "roi.h"

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../checks.h"
#include "../../kernels/roi.h"

namespace fastmtl {

// The kernels index bins, planes and samples with 32-bit ints (roi_pool's argmax is int32).
constexpr int64_t kMaxInt = std::numeric_limits<int32_t>::max();

static void check_sizes(double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, "output_size must be positive, got (", pooled_height, ", ",
              pooled_width, ")");
  TORCH_CHECK_VALUE(pooled_height <= kMaxInt && pooled_width <= kMaxInt && pooled_height * pooled_width <= kMaxInt,
                    "output_size (", pooled_height, ", ", pooled_width,
                    ") is too large: at most 2^31 - 1 bins per roi");
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, "spatial_scale must be finite and > 0, got ",
              spatial_scale);
}

// At most 2^60 output elements (2^63 bytes of float64): past that the size of the output cannot
// be computed; below it, an output that does not fit is named by empty_roi_output.
static void check_output_elements(int64_t rois, int64_t channels, int64_t pooled_height, int64_t pooled_width) {
  const __int128 elements = static_cast<__int128>(rois) * channels * pooled_height * pooled_width;
  TORCH_CHECK_VALUE(elements <= (static_cast<__int128>(1) << 60), "output_size = (", pooled_height, ", ",
                    pooled_width, "): the output of ", rois, " rois x ", channels, " channels x ", pooled_height,
                    " x ", pooled_width, " bins is past 2^60 elements");
}

// Sides below 2^30 too: a float32 sample position at a side of 2^31 - 64 or more rounds to 2^31,
// past an int.
constexpr int64_t kMaxSide = int64_t(1) << 30;

static void check_plane(int64_t height, int64_t width, const char* name) {
  TORCH_CHECK_VALUE(height < kMaxSide && width < kMaxSide && height * width <= kMaxInt, name, ": a feature map of ",
                    height, " x ", width, " is too large: sides below 2^30, at most 2^31 - 1 pixels");
}

// Both ends: the kernels take an int, and -2^32 + 2 would wrap to a fixed grid of 2.
void check_sampling_ratio(int64_t sampling_ratio) {
  TORCH_CHECK_VALUE(sampling_ratio >= -roi::kMaxSamplingRatio && sampling_ratio <= roi::kMaxSamplingRatio,
                    "sampling_ratio must be in [-", roi::kMaxSamplingRatio, ", ", roi::kMaxSamplingRatio,
                    "] (<= 0: adaptive), got ", sampling_ratio);
}

// The scale in the kernels' compute type: a tiny double can round to 0 in float32.
static void check_scale_for(double spatial_scale, at::ScalarType t) {
  TORCH_CHECK_VALUE(t == at::kDouble || static_cast<float>(spatial_scale) > 0.0f,
                    "spatial_scale must be > 0 in float32 (the kernels' compute type for ", t, "), got ",
                    spatial_scale);
}

static void check_rois(const at::Tensor& rois) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "rois must have shape [K, 5], got ", rois.sizes());
}

void check_roi_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width) {
  TORCH_CHECK(input.dim() == 4, "input must have shape [N, C, H, W], got ", input.sizes());
  check_rois(rois);
  check_kernel_float(input, "input");
  TORCH_CHECK(rois.scalar_type() == input.scalar_type(), "rois must have the dtype of input, got ",
              rois.scalar_type(), " and ", input.scalar_type());
  TORCH_CHECK(rois.device() == input.device(), "rois must be on the device of input, got ", rois.device(),
              " and ", input.device());
  check_sizes(spatial_scale, pooled_height, pooled_width);
  check_scale_for(spatial_scale, input.scalar_type());
  check_plane(input.size(2), input.size(3), "input");
  check_output_elements(rois.size(0), input.size(1), pooled_height, pooled_width);
}

at::Tensor empty_roi_output(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                            int64_t pooled_width, std::optional<at::ScalarType> dtype) {
  const int64_t k = rois.size(0), c = input.size(1);
  try {
    return at::empty({k, c, pooled_height, pooled_width}, input.options().dtype(dtype.value_or(input.scalar_type())));
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "output_size = (", pooled_height, ", ", pooled_width, "): the output of ", k,
                      " rois x ", c, " channels x ", pooled_height, " x ", pooled_width,
                      " bins does not fit in memory (", e.what_without_backtrace(), ")");
  }
}

void check_roi_grad(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                    int64_t pooled_width, int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  check_rois(rois);
  check_sizes(spatial_scale, pooled_height, pooled_width);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0,
              "input sizes must be >= 0, got [", batch_size, ", ", channels, ", ", height, ", ", width, "]");
  check_plane(height, width, "input");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              "grad must have shape [", rois.size(0), ", ", channels, ", ", pooled_height, ", ", pooled_width,
              "], got ", grad.sizes());
  TORCH_CHECK(is_kernel_float(grad.scalar_type()) && grad.scalar_type() == rois.scalar_type(),
              "grad must have the dtype of rois, got ", grad.scalar_type(), " and ", rois.scalar_type());
  TORCH_CHECK(grad.device() == rois.device(), "grad must be on the device of rois, got ", grad.device(), " and ",
              rois.device());
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // input [N, C, H, W], rois [K, 5] = (batch index, x1, y1, x2, y2) -> [K, C, pooled_height,
  // pooled_width] in the dtype of input. deterministic only matters to the CUDA backward.
  m.def("roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width,"
        " int sampling_ratio, bool aligned, bool deterministic=False) -> Tensor");
  m.def("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height,"
        " SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width,"
        " int sampling_ratio, bool aligned, bool deterministic=False) -> Tensor");
  // -> (output, argmax int32: index h * W + w of the max in its plane, -1 for an empty bin)
  m.def("roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width)"
        " -> (Tensor, Tensor)");
  m.def("_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height,"
        " SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
}
