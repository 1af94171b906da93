// The autograd kernel of the fused YOLOv1 loss, in C++: at the paper's size (batch 64, 7 x 7)
// the kernels take about 100 us, and the Python autograd wrapper (torch.library's) cost as much
// again, twice over (measured: 275 us forward + backward through Python, see the
// bench-cpu-yolo table for the figure now). The backward scales the saved gradient; under
// create_graph (a double backward) it takes instead the vector-Jacobian product of the
// plain-PyTorch reference, which Python registers as fastmtl::_yolo_v1_loss_vjp (differentiable
// by autograd); without Python it raises.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace fastmtl {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                   const at::Tensor&, int64_t, int64_t, double,
                                                                   double, c10::string_view, c10::string_view, bool);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t);
using VjpSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                          int64_t, double, double, c10::string_view, c10::string_view);

constexpr int kInputs = 10;  // the schema's arguments: the backward returns one gradient for each

class YoloV1Loss : public torch::autograd::Function<YoloV1Loss> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& targets,
                               const at::Tensor& counts, int64_t num_boxes, int64_t num_classes, double lambda_coord,
                               double lambda_noobj, c10::string_view wh, c10::string_view conf_target,
                               bool compute_grad) {
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("fastmtl::yolo_v1_loss", "").typed<ForwardSig>();
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [terms, grad, responsible] = op.call(pred, targets, counts, num_boxes, num_classes, lambda_coord,
                                              lambda_noobj, wh, conf_target, compute_grad);
    ctx->save_for_backward({pred, targets, counts, grad, responsible});
    ctx->saved_data["num_boxes"] = num_boxes;
    ctx->saved_data["num_classes"] = num_classes;
    ctx->saved_data["lambda_coord"] = lambda_coord;
    ctx->saved_data["lambda_noobj"] = lambda_noobj;
    ctx->saved_data["wh"] = std::string(wh);
    ctx->saved_data["conf_target"] = std::string(conf_target);
    ctx->saved_data["compute_grad"] = compute_grad;
    ctx->mark_non_differentiable({grad, responsible});
    ctx->set_materialize_grads(false);  // no zeros for the saved gradient's own gradient
    return {terms, grad, responsible};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& grad_terms = grad_outputs[0];
    variable_list out(kInputs);
    if (!grad_terms.defined()) return out;
    const int64_t num_boxes = ctx->saved_data["num_boxes"].toInt();
    if (at::GradMode::is_enabled()) {
      out[0] = double_backward(ctx, saved, grad_terms);
      return out;
    }
    TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(),
                "yolo_v1_loss was called with compute_grad=False: it saved no gradient");
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow("fastmtl::_yolo_v1_loss_backward", "").typed<BackwardSig>();
    out[0] = op.call(grad_terms.contiguous(), saved[3], saved[4], num_boxes);
    return out;
  }

 private:
  // The reference's vector-Jacobian product, differentiable: Python registers it.
  static at::Tensor double_backward(AutogradContext* ctx, const variable_list& saved, const at::Tensor& grad_terms) {
    const auto handle = c10::Dispatcher::singleton().findSchema({"fastmtl::_yolo_v1_loss_vjp", ""});
    TORCH_CHECK(handle.has_value(),
                "yolo_v1_loss: a double backward needs the plain-PyTorch reference, registered when Python imports "
                "fastmtl");
    const std::string wh = ctx->saved_data["wh"].toStringRef(), conf = ctx->saved_data["conf_target"].toStringRef();
    return handle->typed<VjpSig>().call(saved[0], saved[1], saved[2], grad_terms, ctx->saved_data["num_boxes"].toInt(),
                                        ctx->saved_data["num_classes"].toInt(),
                                        ctx->saved_data["lambda_coord"].toDouble(),
                                        ctx->saved_data["lambda_noobj"].toDouble(), wh, conf);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> yolo_v1_loss_autograd(
    const at::Tensor& pred, const at::Tensor& targets, const at::Tensor& counts, int64_t num_boxes,
    int64_t num_classes, double lambda_coord, double lambda_noobj, c10::string_view wh, c10::string_view conf_target,
    bool compute_grad) {
  const variable_list out = YoloV1Loss::apply(pred, targets, counts, num_boxes, num_classes, lambda_coord,
                                              lambda_noobj, wh, conf_target, compute_grad);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, Autograd, m) { m.impl("yolo_v1_loss", &yolo_v1_loss_autograd); }

}  // namespace fastmtl
