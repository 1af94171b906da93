// Calls fastmtl's ops from C++ through the dispatcher (csrc/include/fastmtl/ops.h) and checks a
// few values. Every function of the header is called once, so a signature that no longer matches
// its schema fails here (c10::Error from the dispatcher).
#include <fastmtl/ops.h>
#include <torch/torch.h>

#include <cmath>
#include <iostream>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  namespace F = fastmtl::ops;
  const auto boxes1 = torch::tensor({{0.f, 0.f, 2.f, 2.f}, {1.f, 1.f, 3.f, 3.f}});
  const auto boxes2 = torch::tensor({{1.f, 1.f, 2.f, 3.f}});

  const auto iou = F::pairwise_box_iou(boxes1, boxes2, "iou", 0.0);
  std::cout << "box_iou =\n" << iou << "\n";
  // Box 0 meets box 2 in a 1x1 square: 1 / (4 + 2 - 1) = 0.2.
  expect(std::abs(iou[0][0].item<float>() - 0.2f) < 1e-6f, "pairwise_box_iou");
  // GIoU of box 1 with box 2: IoU 2 / 4 = 0.5, the enclosing box is box 1 itself.
  expect(std::abs(F::pairwise_box_iou(boxes1, boxes2, "giou")[1][0].item<float>() - 0.5f) < 1e-6f,
         "pairwise_box_iou giou");
  expect(std::abs(F::aligned_box_iou(boxes1, boxes1, "ciou")[0].item<float>() - 1.f) < 1e-6f, "aligned_box_iou");
  try {
    F::pairwise_box_iou(boxes1, boxes2, "xiou");
    expect(false, "an invalid kind raises");
  } catch (const c10::Error& e) {
    expect(std::string(e.what_without_backtrace()).rfind("Invalid kind 'xiou'", 0) == 0, e.what_without_backtrace());
  }

  const auto scores = torch::tensor({0.9f, 0.8f});
  expect(F::nms(boxes1, scores, 0.1).numel() == 1, "nms");
  expect(F::batched_nms(boxes1, scores, torch::tensor({0, 1}, torch::kLong), 0.1).numel() == 2, "batched_nms");
  const auto [keep, decayed] = F::soft_nms(boxes1, scores, std::nullopt, 0.1, 0.5, 0.001, "gaussian");
  expect(keep.numel() == 2 && decayed[1].item<float>() < 0.8f, "soft_nms");
  const auto detections = F::multiclass_nms(boxes1.unsqueeze(0), scores.unsqueeze(0), 0.1, 0.05, 5);
  expect(std::get<4>(detections)[0].item<int64_t>() == 1, "multiclass_nms");

  const auto features = torch::rand({1, 3, 8, 8});
  const auto rois = torch::tensor({{0.f, 0.f, 0.f, 4.f, 4.f}});
  expect(F::roi_align(features, rois, 1.0, 2, 2, 2, true).sizes() == torch::IntArrayRef({1, 3, 2, 2}), "roi_align");
  expect(std::get<0>(F::roi_pool(features, rois, 1.0, 2, 2)).sizes() == torch::IntArrayRef({1, 3, 2, 2}),
         "roi_pool");
  const auto gram = F::gram_matrix(features, false);
  const auto [loss, diff] = F::style_loss(features, gram[0], "mse");
  expect(gram.sizes() == torch::IntArrayRef({1, 3, 3}) && loss.numel() == 1 && diff.numel() == 9, "gram/style");

  std::cout << (failures == 0 ? "ok" : "FAILED") << "\n";
  return failures == 0 ? 0 : 1;
}
