#pragma once
// FASTMTL_HD marks the per-element functions that the CPU and CUDA kernels share.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTMTL_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced: the CPU inner loops vectorize only when the whole per-element computation is inlined.
#define FASTMTL_HD inline __attribute__((always_inline))
#else
#define FASTMTL_HD inline
#endif
