#pragma once
// Torch-free pieces of non-maximum suppression shared by the CPU and CUDA kernels.
#include <cstdint>

#include "box_math.h"

namespace fastmtl {
namespace nms {

// Boxes per word of the suppression bitmask.
constexpr int kBlock = 64;

// Whether the kept box a suppresses box b: IoU(a, b) > threshold, with the same arithmetic as
// torchvision's kernels (union without eps, so two empty boxes give NaN and suppress nothing).
// The IoU is compared in the threshold's type, as torchvision does: double on the CPU, float on
// CUDA. (A float IoU of exactly float(0.1) is above the double 0.1 but not above float(0.1).)
template <typename T, typename Th>
FASTMTL_HD bool suppresses(const box::Box<T>& a, const box::Box<T>& b, T area_a, T area_b, Th threshold) {
  const box::BoxStats<T> sa{area_a, T(0)}, sb{area_b, T(0)};
  return static_cast<Th>(box::pair_value<box::kIoU>(a, b, sa, sb, T(0), T(0))) > threshold;
}

}  // namespace nms
}  // namespace fastmtl
