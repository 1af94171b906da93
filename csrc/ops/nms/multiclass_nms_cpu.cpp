// CPU multiclass_nms: the images in parallel. In each, the candidates above the score threshold
// are sorted once; each one is then kept unless a kept box of its class suppresses it, checked
// against the (at most max_detections) kept boxes in one vectorized pass, until enough are kept.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "../../kernels/nms.h"
#include "../common.h"
#include "nms.h"

namespace fastmtl {
namespace {

using box::Box;

// The kept detections of one image as columns, for the vectorized check.
template <typename T>
struct KeptColumns {
  std::vector<T> x1, y1, x2, y2, area;
  std::vector<int64_t> cls;

  explicit KeptColumns(int64_t capacity) {
    for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->reserve(capacity);
    cls.reserve(capacity);
  }
  int64_t size() const { return static_cast<int64_t>(cls.size()); }
  void push(const Box<T>& b, T a, int64_t c) {
    x1.push_back(b.x1); y1.push_back(b.y1); x2.push_back(b.x2); y2.push_back(b.y2);
    area.push_back(a); cls.push_back(c);
  }
};

// Whether any kept box of class c suppresses box b.
template <typename T>
FASTMTL_CPU_CLONES bool suppressed_by_kept(const T* __restrict__ x1, const T* __restrict__ y1,
                                           const T* __restrict__ x2, const T* __restrict__ y2,
                                           const T* __restrict__ area, const int64_t* __restrict__ cls,
                                           int64_t kept, Box<T> b, T area_b, int64_t c, T threshold) {
  uint8_t hit = 0;
  for (int64_t k = 0; k < kept; ++k) {
    const bool s = nms::suppresses(Box<T>{x1[k], y1[k], x2[k], y2[k]}, b, area[k], area_b, threshold);
    hit |= static_cast<uint8_t>(s & (cls[k] == c));
  }
  return hit != 0;
}

// Flat candidate indices (n * C + c) of one image's scores [N * C] above the threshold (NaN never is).
template <typename score_t>
std::vector<int64_t> candidates(const score_t* scores, int64_t count, double score_threshold) {
  std::vector<int64_t> found;
  for (int64_t f = 0; f < count; ++f) {
    if (static_cast<double>(scores[f]) > score_threshold) found.push_back(f);
  }
  return found;
}

// Calls visit(f) on the candidates by decreasing score, ties by increasing index, until it
// returns false. Only as much is sorted as is visited: a growing prefix at a time, picked with
// nth_element, as greedy NMS usually stops after a few times max_detections candidates.
template <typename score_t, typename Visit>
void visit_by_score(std::vector<int64_t>& cand, const score_t* scores, int64_t first_chunk, Visit visit) {
  const auto before = [scores](int64_t a, int64_t b) {
    const double sa = static_cast<double>(scores[a]), sb = static_cast<double>(scores[b]);
    return sa > sb || (sa == sb && a < b);
  };
  auto first = cand.begin();
  for (int64_t chunk = first_chunk; first != cand.end(); chunk *= 4) {
    const auto last = cand.end() - first > chunk ? first + chunk : cand.end();
    std::nth_element(first, last, cand.end(), before);
    std::sort(first, last, before);
    for (; first != last; ++first) {
      if (!visit(*first)) return;
    }
  }
}

struct Outputs {
  at::Tensor boxes, scores, classes, indices, counts;
};

template <typename box_t, typename score_t>
void image_nms(const box_t* boxes, const score_t* scores, int64_t n, int64_t classes, bool per_class_boxes,
               double iou_threshold, double score_threshold, int64_t max_det, int64_t image, Outputs& out) {
  using T = at::opmath_type<box_t>;
  const T threshold = threshold_below<T>(iou_threshold);
  box_t* out_boxes = out.boxes.mutable_data_ptr<box_t>() + image * max_det * 4;
  score_t* out_scores = out.scores.mutable_data_ptr<score_t>() + image * max_det;
  int64_t* out_classes = out.classes.mutable_data_ptr<int64_t>() + image * max_det;
  int64_t* out_indices = out.indices.mutable_data_ptr<int64_t>() + image * max_det;
  KeptColumns<T> kept(std::min(max_det, n * classes));  // never more kept than candidates
  auto cand = candidates(scores, n * classes, score_threshold);
  visit_by_score(cand, scores, std::max<int64_t>(4 * max_det, 256), [&](int64_t f) {
    const int64_t c = f % classes;
    const box_t* src = boxes + 4 * (per_class_boxes ? f : f / classes);
    const Box<T> b = box::load_box<T>(src);
    const T area_b = box::area(b);
    if (suppressed_by_kept(kept.x1.data(), kept.y1.data(), kept.x2.data(), kept.y2.data(), kept.area.data(),
                           kept.cls.data(), kept.size(), b, area_b, c, threshold)) {
      return true;
    }
    const int64_t k = kept.size();
    std::copy(src, src + 4, out_boxes + 4 * k);
    out_scores[k] = scores[f];
    out_classes[k] = c;
    out_indices[k] = f / classes;
    kept.push(b, area_b, c);
    return kept.size() < max_det;
  });
  out.counts.mutable_data_ptr<int64_t>()[image] = kept.size();
}

Detections multiclass_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                           double score_threshold, int64_t max_detections) {
  check_multiclass_nms_args(boxes, scores, iou_threshold, score_threshold, max_detections);
  auto detections = empty_detections(boxes, scores, max_detections);
  Outputs out;
  std::tie(out.boxes, out.scores, out.classes, out.indices, out.counts) = detections;
  const int64_t images = boxes.size(0), n = boxes.size(1), classes = scores.dim() == 3 ? scores.size(2) : 1;
  if (images == 0 || n == 0 || max_detections == 0) return detections;
  const auto b = boxes.contiguous(), s = scores.contiguous();
  const bool per_class_boxes = boxes.dim() == 4;
  FASTMTL_DISPATCH_BOXES(b.scalar_type(), "multiclass_nms_cpu", [&] {
    using box_t = scalar_t;
    FASTMTL_DISPATCH_BOXES(s.scalar_type(), "multiclass_nms_cpu_scores", [&] {
      at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          image_nms(b.const_data_ptr<box_t>() + i * n * (per_class_boxes ? classes : 1) * 4,
                    s.const_data_ptr<scalar_t>() + i * n * classes, n, classes, per_class_boxes, iou_threshold,
                    score_threshold, max_detections, i, out);
        }
      });
    });
  });
  return detections;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("multiclass_nms", &multiclass_nms_cpu); }

}  // namespace fastmtl
