// Autocast kernels (AutocastCPU, AutocastCUDA): what fastmtl's ops do under torch.autocast.
//
// Under autocast, tensors that meet in one op often have different dtypes (bf16 features and
// fp32 boxes, fp16 predicted boxes and fp32 targets). The kernels want one dtype, so:
// - roi_align, roi_pool: as torchvision's autocast kernels, both tensors are computed in float32
//   (float64 if either is) and the output comes back in the dtype of input. When input and rois
//   already share a dtype, nothing is cast: the kernels read half types and compute in float32.
// - pairwise_box_iou, aligned_box_iou: two dtypes are computed in the wider one (float32 at
//   least); the result is float32 (or float64), as without autocast.
// The NMS family takes boxes and scores of any float dtypes already (half types computed in
// float32, as torchvision's cast to float32 does), and the Gram/style ops accumulate half input
// in float32: they fall through (no autocast kernel). Backward ops are not under autocast.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <tuple>

namespace fastmtl {
namespace {

constexpr auto kAutocastKeys = c10::DispatchKeySet({c10::DispatchKey::AutocastCPU, c10::DispatchKey::AutocastCUDA});

// float32, or float64 when either tensor is float64.
at::ScalarType common_float(const at::Tensor& a, const at::Tensor& b) {
  return (a.scalar_type() == at::kDouble || b.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

at::Tensor roi_align_autocast(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                              c10::SymInt pooled_height, c10::SymInt pooled_width, int64_t sampling_ratio,
                              bool aligned, bool deterministic) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKeys);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastmtl::roi_align", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymInt, c10::SymInt,
                                         int64_t, bool, bool)>();
  if (input.scalar_type() == rois.scalar_type()) {
    return op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, deterministic);
  }
  const auto t = common_float(input, rois);
  return op.call(input.to(t), rois.to(t), spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned,
                 deterministic)
      .to(input.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> roi_pool_autocast(const at::Tensor& input, const at::Tensor& rois,
                                                     double spatial_scale, c10::SymInt pooled_height,
                                                     c10::SymInt pooled_width) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKeys);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastmtl::roi_pool", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, double,
                                                                 c10::SymInt, c10::SymInt)>();
  if (input.scalar_type() == rois.scalar_type()) {
    return op.call(input, rois, spatial_scale, pooled_height, pooled_width);
  }
  const auto t = common_float(input, rois);
  auto [out, argmax] = op.call(input.to(t), rois.to(t), spatial_scale, pooled_height, pooled_width);
  return {out.to(input.scalar_type()), argmax};
}

template <const char* kName>
at::Tensor box_iou_autocast(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::string_view kind, double eps) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocastKeys);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow(kName, "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double)>();
  if (boxes1.scalar_type() == boxes2.scalar_type()) return op.call(boxes1, boxes2, kind, eps);
  const auto t = common_float(boxes1, boxes2);
  return op.call(boxes1.to(t), boxes2.to(t), kind, eps);
}

constexpr char kPairwise[] = "fastmtl::pairwise_box_iou";
constexpr char kAligned[] = "fastmtl::aligned_box_iou";

void register_autocast(torch::Library& m) {
  m.impl("roi_align", &roi_align_autocast);
  m.impl("roi_pool", &roi_pool_autocast);
  m.impl("pairwise_box_iou", &box_iou_autocast<kPairwise>);
  m.impl("aligned_box_iou", &box_iou_autocast<kAligned>);
}

}  // namespace
}  // namespace fastmtl

TORCH_LIBRARY_IMPL(fastmtl, AutocastCPU, m) { fastmtl::register_autocast(m); }
TORCH_LIBRARY_IMPL(fastmtl, AutocastCUDA, m) { fastmtl::register_autocast(m); }
