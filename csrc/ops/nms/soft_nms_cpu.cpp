// CPU Soft-NMS. The active boxes are kept as columns in index order; each round selects the
// highest current score (ties: lowest index), then one pass decays the others' scores and
// compacts away those that fell below the score threshold.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;

template <typename T>
struct Active {
  std::vector<T> x1, y1, x2, y2, area, score;
  std::vector<int64_t> index, cls;
  int64_t size = 0;
};

template <typename box_t, typename T>
Active<T> initial_active(const box_t* boxes, const T* scores, const int64_t* cls, int64_t n, T score_threshold) {
  Active<T> a;
  for (auto* v : {&a.x1, &a.y1, &a.x2, &a.y2, &a.area, &a.score}) v->resize(n);
  a.index.resize(n);
  a.cls.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    if (!(scores[i] >= score_threshold)) continue;
    const Box<T> b = box::load_box<T>(boxes + 4 * i);
    const int64_t k = a.size++;
    a.x1[k] = b.x1; a.y1[k] = b.y1; a.x2[k] = b.x2; a.y2[k] = b.y2;
    a.area[k] = box::area(b);
    a.score[k] = scores[i];
    a.index[k] = i;
    a.cls[k] = cls ? cls[i] : 0;
  }
  return a;
}

// Position of the highest score, the first one on ties.
template <typename T>
int64_t best_position(const T* score, int64_t n) {
  int64_t best = 0;
  for (int64_t k = 1; k < n; ++k) {
    if (score[k] > score[best]) best = k;
  }
  return best;
}

// Decays every active box but s by its overlap with s, keeping (in order) those still at or
// above the threshold.
template <typename T>
void decay_and_compact(Active<T>& a, int64_t s, nms::SoftMethod method, T iou_threshold, T sigma,
                       T score_threshold) {
  // Read before the loop: compaction overwrites position s.
  const Box<T> sel{a.x1[s], a.y1[s], a.x2[s], a.y2[s]};
  const T area_sel = a.area[s];
  const int64_t cls_sel = a.cls[s];
  int64_t w = 0;
  for (int64_t k = 0; k < a.size; ++k) {
    if (k == s) continue;
    T score = a.score[k];
    if (a.cls[k] == cls_sel) {
      const T iou = nms::overlap(sel, Box<T>{a.x1[k], a.y1[k], a.x2[k], a.y2[k]}, area_sel, a.area[k]);
      score *= nms::soft_weight(iou, method, iou_threshold, sigma);
    }
    if (!(score >= score_threshold)) continue;
    a.x1[w] = a.x1[k]; a.y1[w] = a.y1[k]; a.x2[w] = a.x2[k]; a.y2[w] = a.y2[k];
    a.area[w] = a.area[k]; a.score[w] = score; a.index[w] = a.index[k]; a.cls[w] = a.cls[k];
    ++w;
  }
  a.size = w;
}

std::tuple<at::Tensor, at::Tensor> soft_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                double sigma, double score_threshold, c10::string_view method) {
  const nms::SoftMethod decay =
      check_soft_nms_args(boxes, scores, idxs, iou_threshold, sigma, score_threshold, method);
  const auto b = boxes.contiguous();
  const at::Tensor c = idxs ? idxs->contiguous() : at::Tensor();
  std::vector<int64_t> keep;
  at::Tensor kept_scores;
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "soft_nms_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    // Scores are decayed in the boxes' compute type.
    const auto s = scores.to(c10::CppTypeToScalarType<T>::value).contiguous();
    // Thresholds compare as the doubles they are (see threshold_below).
    const T iou_t = threshold_below<T>(iou_threshold), score_t = threshold_at_or_above<T>(score_threshold);
    Active<T> a = initial_active(b.const_data_ptr<scalar_t>(), s.const_data_ptr<T>(),
                                 idxs ? c.const_data_ptr<int64_t>() : nullptr, b.size(0), score_t);
    std::vector<T> values;
    while (a.size > 0) {
      const int64_t best = best_position(a.score.data(), a.size);
      keep.push_back(a.index[best]);
      values.push_back(a.score[best]);
      decay_and_compact(a, best, decay, iou_t, static_cast<T>(sigma), score_t);
    }
    kept_scores = at::empty({static_cast<int64_t>(values.size())}, s.options());
    std::copy(values.begin(), values.end(), kept_scores.mutable_data_ptr<T>());
  });
  auto keep_t = at::empty({static_cast<int64_t>(keep.size())}, boxes.options().dtype(at::kLong));
  std::copy(keep.begin(), keep.end(), keep_t.mutable_data_ptr<int64_t>());
  return {keep_t, kept_scores.to(scores.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("soft_nms", &soft_nms_cpu); }

}  // namespace fastmtl
