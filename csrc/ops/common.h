#pragma once
// Macros and launch helpers shared by the op kernels.
#include <ATen/Dispatch.h>

#include <cstdint>

#include "../kernels/hd.h"

// The floating types the box ops take; kernels compute in at::opmath_type<scalar_t>.
#define FASTMTL_DISPATCH_BOXES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

// x86-64 CPU builds carry an AVX2 clone of each marked inner loop, picked at load time, next to
// the baseline SSE2 one: twice the lanes where the CPU allows, and still portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define FASTMTL_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FASTMTL_CPU_CLONES
#endif

namespace fastmtl {

// ceil(a / b) for a >= 0, b > 0: blocks of b items to cover a items (host and device).
FASTMTL_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Most blocks a grid-stride launch starts: 65536 blocks of 256 threads are 16.7M threads, about
// 60 full waves of an H100 (132 SMs x 2048 threads); more blocks add no parallelism, and each
// thread's loop takes the rest. Far below the 1-D grid limit (2^31 - 1).
constexpr int64_t kMaxGridBlocks = int64_t(1) << 16;

// Blocks for a kernel whose blocks stride over `items` work items, `per_block` per block per
// step: enough to cover them, at most kMaxGridBlocks, at least 1 (a launch of 0 blocks fails).
// Only for kernels with a grid-stride loop; a kernel that maps one block (or thread) to each
// item without looping takes ceil_div.
inline int64_t grid_stride_blocks(int64_t items, int64_t per_block) {
  const int64_t blocks = ceil_div(items, per_block);
  return blocks < 1 ? 1 : (blocks > kMaxGridBlocks ? kMaxGridBlocks : blocks);
}

}  // namespace fastmtl
