#pragma once
// Macros shared by the op kernels.
#include <ATen/Dispatch.h>

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
