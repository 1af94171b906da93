#pragma once
// Shared declarations of the Gram matrix and style loss ops.
//
// The products F F^T (forward) and M F (backward) are BLAS calls through ATen (at::mm / at::bmm:
// MKL or OpenBLAS on the CPU, cuBLAS on CUDA); they are device-agnostic and live in gram.cpp.
// The per-element work around them (scales, mirror, difference and loss) is each backend's,
// with its math in csrc/kernels/gram.h.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "../../kernels/gram.h"

namespace fastmtl {

// Argument checks shared by the CPU and CUDA kernels; messages name the argument.
void check_gram_features(const at::Tensor& features);
void check_gram_grad(const at::Tensor& grad, const at::Tensor& features);
// The style-loss normalization named "gatys" or "mse"; else an error starting "Invalid normalization".
gram::Normalization parse_style_normalization(c10::string_view normalization);
// Both return the normalization that `normalization` names.
gram::Normalization check_style_args(const at::Tensor& features, const at::Tensor& target_gram,
                                     c10::string_view normalization);
gram::Normalization check_style_grad(const at::Tensor& grad, const at::Tensor& diff, const at::Tensor& features,
                                     c10::string_view normalization);

// U = F F^T per sample for features [N, C, H, W], as [N, C, C] in the accumulate type, with only
// the blocks on and above the diagonal computed: every (i, j) with i <= j is valid, the rest is
// not written. The rows are split in blocks of kGramBlock; block row r multiplies its rows with
// the rows from its own first row on, so about half of the full product is computed.
at::Tensor gram_upper(const at::Tensor& features);

// dL/dF = M F per sample for a symmetric M [N, C, C] (accumulate type), as a tensor shaped and
// typed like features, in channels_last when features are, else contiguous.
at::Tensor symmetric_times_features(const at::Tensor& m, const at::Tensor& features);

}  // namespace fastmtl
