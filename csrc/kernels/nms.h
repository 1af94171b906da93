#pragma once
// Torch-free pieces of non-maximum suppression shared by the CPU and CUDA kernels.
#include <cmath>
#include <cstdint>

#include "box_math.h"

namespace fastmtl {
namespace nms {

// Boxes per word of the suppression bitmask.
constexpr int kBlock = 64;

// Whether the kept box a suppresses box b: IoU(a, b) > threshold, with the same arithmetic as
// torchvision's kernels (union without eps, so two empty boxes give NaN and suppress nothing).
// Every fastmtl NMS kernel, CPU and CUDA, compares the IoU (in T: float for float, half and
// bfloat16 boxes, double for double) with the double threshold, as torchvision's CPU kernel does;
// callers pass threshold_below<T>(threshold) (csrc/ops/nms/nms.h), which gives exactly those
// decisions in T. (torchvision's CUDA kernel compares with float(threshold) instead: a float IoU
// of exactly float(0.6), boxes [0, 0, 10, 1] and [0, 0, 6, 1], is above the double 0.6 but not
// above float(0.6).)
template <typename T>
FASTMTL_HD bool suppresses(const box::Box<T>& a, const box::Box<T>& b, T area_a, T area_b, T threshold) {
  const box::BoxStats<T> sa{area_a, T(0)}, sb{area_b, T(0)};
  return box::pair_value<box::kIoU>(a, b, sa, sb, T(0), T(0)) > threshold;
}

// The IoU of kept box a with box b, with NaN (two empty boxes) read as 0: no overlap.
template <typename T>
FASTMTL_HD T overlap(const box::Box<T>& a, const box::Box<T>& b, T area_a, T area_b) {
  const box::BoxStats<T> sa{area_a, T(0)}, sb{area_b, T(0)};
  const T iou = box::pair_value<box::kIoU>(a, b, sa, sb, T(0), T(0));
  return iou == iou ? iou : T(0);
}

enum SoftMethod : int64_t { kLinear = 0, kGaussian = 1 };

// Soft-NMS decay of a score whose box overlaps the selected box by iou: linear, 1 - iou above
// the threshold; Gaussian, exp(-iou^2 / sigma).
template <typename T>
FASTMTL_HD T soft_weight(T iou, SoftMethod method, T threshold, T sigma) {
#ifdef __CUDA_ARCH__
  if (method == kGaussian) return exp(-(iou * iou) / sigma);
#else
  if (method == kGaussian) return std::exp(-(iou * iou) / sigma);
#endif
  return iou > threshold ? T(1) - iou : T(1);
}

}  // namespace nms
}  // namespace fastmtl
