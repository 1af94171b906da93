#pragma once
// The first pass of the anchor losses' CUDA backwards (yolo_v3_cuda.cu, yolo_v5_cuda.cu): every
// value of a scale's gradient, the objectness one (value 4 of each prediction) its saved
// gradient times scale(prediction), the others zero; the assigned or candidate rows are added
// after.
#include <ATen/OpMathType.h>

#include <cstdint>

namespace fastmtl {

// Scale is a device functor: T operator()(int64_t prediction) const.
template <typename scalar_t, typename Scale>
__global__ void obj_grad_kernel(const scalar_t* __restrict__ obj_grad, int64_t total, int64_t values, Scale scale,
                                scalar_t* __restrict__ out) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t at = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; at < total; at += int64_t(gridDim.x) * blockDim.x) {
    const int64_t prediction = at / values;
    out[at] = at % values == 4 ? static_cast<scalar_t>(static_cast<T>(obj_grad[prediction]) * scale(prediction))
                               : scalar_t(0);
  }
}

}  // namespace fastmtl
