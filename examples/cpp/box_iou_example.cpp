// Calls fastmtl::pairwise_box_iou from C++ through the dispatcher and checks one value.
#include <torch/torch.h>

#include <cmath>
#include <iostream>

int main() {
  const auto boxes1 = torch::tensor({{0.f, 0.f, 2.f, 2.f}, {1.f, 1.f, 3.f, 3.f}});
  const auto boxes2 = torch::tensor({{1.f, 1.f, 2.f, 3.f}});
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("fastmtl::pairwise_box_iou", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view, double)>();
  const auto iou = op.call(boxes1, boxes2, "iou", /*eps=*/0.0);
  std::cout << "box_iou =\n" << iou << "\n";
  // Box 0 meets box 2 in a 1x1 square: 1 / (4 + 2 - 1) = 0.2.
  return std::abs(iou[0][0].item<float>() - 0.2f) < 1e-6f ? 0 : 1;
}
