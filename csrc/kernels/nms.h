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
// The caller picks the threshold: torchvision compares with the double threshold on the CPU
// (threshold_below gives the same decisions in T) and with float(threshold) on CUDA. (A float IoU
// of exactly float(0.1) is above the double 0.1 but not above float(0.1).)
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
FASTMTL_HD T soft_weight(T iou, int64_t method, T threshold, T sigma) {
#ifdef __CUDA_ARCH__
  if (method == kGaussian) return exp(-(iou * iou) / sigma);
#else
  if (method == kGaussian) return std::exp(-(iou * iou) / sigma);
#endif
  return iou > threshold ? T(1) - iou : T(1);
}

}  // namespace nms
}  // namespace fastmtl
