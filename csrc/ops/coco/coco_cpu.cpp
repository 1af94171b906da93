// CPU COCO box evaluation. Detections and ground truths are grouped by (class, image) with one
// sort each (ties by index, so stable); the greedy matching of every group runs in parallel (at::parallel_for over
// image x class), then the precision/recall curves of every class are accumulated in parallel.
// The detection order is pycocotools': by decreasing score, ties by image, then by the order
// given (its stable mergesort of -score over the images concatenated in order).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "../../kernels/coco.h"
#include "coco.h"

namespace fastmtl {
namespace {

// np.spacing(1): pycocotools adds it to the detection count before dividing.
constexpr double kEps = 2.220446049250313e-16;

struct Problem {
  const double *det_boxes, *det_scores, *gt_boxes, *gt_areas, *iou_thr, *rec_thr, *ranges;
  const int64_t *det_labels, *det_images, *gt_labels, *gt_images;
  const bool* gt_crowd;
  int64_t n, m, T, R, A, I, K;
  std::vector<int64_t> max_dets;
  int64_t keep() const { return max_dets.back(); }  // detections kept per image and class
};

// One (class, image) group: its detections at [d0, d1) of the sorted detections, its ground
// truths at [g0, g1) of the sorted ground truths.
struct Group {
  int64_t key, d0, d1, g0, g1;
};

void check_no_nan(const double* v, int64_t count, const char* name) {
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK_VALUE(!std::isnan(v[i]), name, " must not contain NaN (at flat index ", i, ")");
  }
}

void check_range(const int64_t* v, int64_t count, int64_t bound, const char* name, const char* bound_name) {
  for (int64_t i = 0; i < count; ++i) {
    TORCH_CHECK_VALUE(v[i] >= 0 && v[i] < bound, name, " has a value outside [0, ", bound_name, " = ", bound,
                      "): ", v[i], " at index ", i);
  }
}

void check_values(const Problem& p) {
  check_no_nan(p.det_boxes, 4 * p.n, "det_boxes");
  check_no_nan(p.det_scores, p.n, "det_scores");
  check_no_nan(p.gt_boxes, 4 * p.m, "gt_boxes");
  check_no_nan(p.gt_areas, p.m, "gt_areas");
  check_no_nan(p.iou_thr, p.T, "iou_thresholds");
  check_no_nan(p.rec_thr, p.R, "recall_thresholds");
  check_no_nan(p.ranges, 2 * p.A, "area_ranges");
  for (int64_t r = 1; r < p.R; ++r) {
    TORCH_CHECK_VALUE(p.rec_thr[r] >= p.rec_thr[r - 1], "recall_thresholds has values out of order at index ", r,
                      ": they must be non-decreasing");
  }
  check_range(p.det_labels, p.n, p.K, "det_labels", "num_classes");
  check_range(p.gt_labels, p.m, p.K, "gt_labels", "num_classes");
  check_range(p.det_images, p.n, p.I, "det_images", "num_images");
  check_range(p.gt_images, p.m, p.I, "gt_images", "num_images");
}

// Indices 0..count sorted by key (class-major), then by decreasing score (detections), then by
// index: a stable order. Sorting (key, score, index) rows keeps the comparisons in cache.
std::vector<int64_t> sorted_rows(const int64_t* labels, const int64_t* images, const double* scores, int64_t count,
                                 int64_t I, std::vector<int64_t>& keys) {
  struct Row {
    int64_t key;
    double score;
    int64_t index;
  };
  std::vector<Row> rows(count);
  keys.resize(count);
  for (int64_t i = 0; i < count; ++i) {
    keys[i] = labels[i] * I + images[i];
    rows[i] = {keys[i], scores != nullptr ? scores[i] : 0.0, i};
  }
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
    if (a.key != b.key) return a.key < b.key;
    if (a.score != b.score) return a.score > b.score;
    return a.index < b.index;
  });
  std::vector<int64_t> order(count);
  for (int64_t i = 0; i < count; ++i) order[i] = rows[i].index;
  return order;
}

// Merges the two sorted key lists into the groups that hold a detection or a ground truth.
std::vector<Group> make_groups(const std::vector<int64_t>& det_keys, const std::vector<int64_t>& det_order,
                               const std::vector<int64_t>& gt_keys, const std::vector<int64_t>& gt_order) {
  std::vector<Group> groups;
  const int64_t n = det_order.size(), m = gt_order.size();
  int64_t i = 0, j = 0;
  while (i < n || j < m) {
    const int64_t kd = i < n ? det_keys[det_order[i]] : INT64_MAX;
    const int64_t kg = j < m ? gt_keys[gt_order[j]] : INT64_MAX;
    Group g{std::min(kd, kg), i, i, j, j};
    while (g.d1 < n && det_keys[det_order[g.d1]] == g.key) ++g.d1;
    while (g.g1 < m && gt_keys[gt_order[g.g1]] == g.key) ++g.g1;
    i = g.d1;
    j = g.g1;
    groups.push_back(g);
  }
  return groups;
}

// Scratch of one thread's matching.
struct MatchScratch {
  std::vector<double> iou;
  std::vector<int64_t> visit;
  std::vector<uint8_t> crowd, ignored, outside, taken;
};

// Statuses of the detections of a group without ground truth (most groups).
void unmatched_group(const Problem& p, const Group& grp, const int64_t* det_order, int64_t D, uint8_t* status) {
  for (int64_t d = 0; d < D; ++d) {
    const double* db = p.det_boxes + 4 * det_order[grp.d0 + d];
    const double area = db[2] * db[3];
    for (int64_t a = 0; a < p.A; ++a) {
      const bool outside = area < p.ranges[2 * a] || area > p.ranges[2 * a + 1];
      uint8_t* st = status + ((grp.d0 + d) * p.A + a) * p.T;
      std::fill(st, st + p.T, outside ? coco::kIgnored : coco::kFalsePositive);
    }
  }
}

// Matches one group at every area range and threshold: status[(pos * A + a) * T + t] for its
// first keep() detections; npig[a] = its ground truths that count at area range a.
void match_group(const Problem& p, const Group& grp, const int64_t* det_order, const int64_t* gt_order,
                 uint8_t* status, int64_t* npig, MatchScratch& s) {
  const int64_t D = std::min(grp.d1 - grp.d0, p.keep()), G = grp.g1 - grp.g0;
  if (G == 0) {  // nothing to match: false positives, or ignored outside the area range
    unmatched_group(p, grp, det_order, D, status);
    return;
  }
  s.iou.resize(D * G);
  s.visit.resize(G);
  s.crowd.resize(G);
  s.ignored.resize(G);
  s.taken.resize(G);
  s.outside.resize(D);
  for (int64_t g = 0; g < G; ++g) s.crowd[g] = p.gt_crowd[gt_order[grp.g0 + g]];
  for (int64_t d = 0; d < D; ++d) {
    const double* db = p.det_boxes + 4 * det_order[grp.d0 + d];
    for (int64_t g = 0; g < G; ++g) {
      s.iou[d * G + g] = coco::box_iou(db, p.gt_boxes + 4 * gt_order[grp.g0 + g], s.crowd[g]);
    }
  }
  for (int64_t a = 0; a < p.A; ++a) {
    const double lo = p.ranges[2 * a], hi = p.ranges[2 * a + 1];
    int64_t counted = 0;
    for (int64_t g = 0; g < G; ++g) {
      const double area = p.gt_areas[gt_order[grp.g0 + g]];
      s.ignored[g] = s.crowd[g] || area < lo || area > hi;
      if (!s.ignored[g]) s.visit[counted++] = g;
    }
    npig[a] = counted;
    if (D == 0) continue;  // the ground truths count; nothing to match
    for (int64_t g = 0, k = counted; g < G; ++g) {  // ignored ones last, in their order
      if (s.ignored[g]) s.visit[k++] = g;
    }
    for (int64_t d = 0; d < D; ++d) {
      const double* db = p.det_boxes + 4 * det_order[grp.d0 + d];
      const double area = db[2] * db[3];
      s.outside[d] = area < lo || area > hi;
    }
    for (int64_t t = 0; t < p.T; ++t) {
      coco::greedy_match(s.iou.data(), D, G, s.visit.data(), s.crowd.data(), s.ignored.data(), s.outside.data(),
                         p.iou_thr[t], s.taken.data(), status + (grp.d0 * p.A + a) * p.T + t, p.A * p.T);
    }
  }
}

// Output views: precision [T, R, K, A, M], recall [T, K, A, M].
struct Curves {
  double *precision, *recall;
  int64_t M;
  int64_t p_index(const Problem& p, int64_t t, int64_t r, int64_t k, int64_t a, int64_t mi) const {
    return (((t * p.R + r) * p.K + k) * p.A + a) * M + mi;
  }
  int64_t r_index(const Problem& p, int64_t t, int64_t k, int64_t a, int64_t mi) const {
    return ((t * p.K + k) * p.A + a) * M + mi;
  }
};

// A class's detections in pycocotools' order (by decreasing score, ties by image, then by
// rank in the image): their rank in the image and statuses [n, A, T], gathered contiguously.
struct RankedClass {
  std::vector<int64_t> rank;
  std::vector<uint8_t> status;
};

RankedClass rank_class(const Problem& p, int64_t pos0, int64_t pos1, const int64_t* det_order, const int64_t* rank,
                       const uint8_t* status) {
  std::vector<std::pair<double, int64_t>> by_score;  // (score, position): positions are in image order
  for (int64_t pos = pos0; pos < pos1; ++pos) {
    if (rank[pos] < p.keep()) by_score.emplace_back(p.det_scores[det_order[pos]], pos);
  }
  std::sort(by_score.begin(), by_score.end(), [](const auto& x, const auto& y) {
    return x.first != y.first ? x.first > y.first : x.second < y.second;
  });
  const int64_t n = by_score.size(), AT = p.A * p.T;
  RankedClass out{std::vector<int64_t>(n), std::vector<uint8_t>(n * AT)};
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = by_score[i].second;
    out.rank[i] = rank[pos];
    std::copy(status + pos * AT, status + (pos + 1) * AT, out.status.data() + i * AT);
  }
  return out;
}

// Curves of class k at area range a for every maxDets and threshold. Only true positives are
// recorded: recall changes only there, and the precision after a false positive is below the
// one before it, so the envelope and the recall samples are the same as over every detection
// (and ignored detections change neither count).
void accumulate_class(const Problem& p, const Curves& out, int64_t k, int64_t a, int64_t npig,
                      const RankedClass& ranked, std::vector<double>& rc, std::vector<double>& pr) {
  const int64_t n = ranked.rank.size(), T = p.T, AT = p.A * p.T, cap = std::min(n, npig);
  rc.resize(T * cap);
  pr.resize(T * cap);
  std::vector<int64_t> tp(T), fp(T);
  for (int64_t mi = 0; mi < out.M; ++mi) {
    std::fill(tp.begin(), tp.end(), 0);
    std::fill(fp.begin(), fp.end(), 0);
    for (int64_t i = 0; i < n; ++i) {
      if (ranked.rank[i] >= p.max_dets[mi]) continue;
      const uint8_t* st = ranked.status.data() + i * AT + a * T;
      for (int64_t t = 0; t < T; ++t) {
        if (st[t] == coco::kFalsePositive) ++fp[t];
        if (st[t] != coco::kTruePositive) continue;
        const double tps = double(++tp[t]), fps = double(fp[t]);
        rc[t * cap + tp[t] - 1] = tps / double(npig);
        pr[t * cap + tp[t] - 1] = tps / ((fps + tps) + kEps);
      }
    }
    const int64_t stride = p.K * p.A * out.M;
    for (int64_t t = 0; t < T; ++t) {
      out.recall[out.r_index(p, t, k, a, mi)] = double(tp[t]) / double(npig);
      double* q = out.precision + out.p_index(p, t, 0, k, a, mi);
      for (int64_t r = 0; r < p.R; ++r) q[r * stride] = 0.0;
      coco::sample_precision(rc.data() + t * cap, pr.data() + t * cap, tp[t], p.rec_thr, p.R, q, stride);
    }
  }
}

Problem make_problem(const at::Tensor& det_boxes, const at::Tensor& det_scores, const at::Tensor& det_labels,
                     const at::Tensor& det_images, const at::Tensor& gt_boxes, const at::Tensor& gt_labels,
                     const at::Tensor& gt_images, const at::Tensor& gt_iscrowd, const at::Tensor& gt_areas,
                     const at::Tensor& iou_thresholds, const at::Tensor& recall_thresholds,
                     const at::Tensor& area_ranges, c10::IntArrayRef max_dets, int64_t num_images,
                     int64_t num_classes) {
  Problem p;
  p.det_boxes = det_boxes.const_data_ptr<double>();
  p.det_scores = det_scores.const_data_ptr<double>();
  p.det_labels = det_labels.const_data_ptr<int64_t>();
  p.det_images = det_images.const_data_ptr<int64_t>();
  p.gt_boxes = gt_boxes.const_data_ptr<double>();
  p.gt_labels = gt_labels.const_data_ptr<int64_t>();
  p.gt_images = gt_images.const_data_ptr<int64_t>();
  p.gt_crowd = gt_iscrowd.const_data_ptr<bool>();
  p.gt_areas = gt_areas.const_data_ptr<double>();
  p.iou_thr = iou_thresholds.const_data_ptr<double>();
  p.rec_thr = recall_thresholds.const_data_ptr<double>();
  p.ranges = area_ranges.const_data_ptr<double>();
  p.n = det_boxes.size(0);
  p.m = gt_boxes.size(0);
  p.T = iou_thresholds.size(0);
  p.R = recall_thresholds.size(0);
  p.A = area_ranges.size(0);
  p.I = num_images;
  p.K = num_classes;
  p.max_dets.assign(max_dets.begin(), max_dets.end());
  return p;
}

void evaluate(const Problem& p, const Curves& out) {
  std::vector<int64_t> det_keys, gt_keys;
  const std::vector<int64_t> det_order = sorted_rows(p.det_labels, p.det_images, p.det_scores, p.n, p.I, det_keys);
  const std::vector<int64_t> gt_order = sorted_rows(p.gt_labels, p.gt_images, nullptr, p.m, p.I, gt_keys);
  const std::vector<Group> groups = make_groups(det_keys, det_order, gt_keys, gt_order);
  const int64_t B = groups.size();
  std::vector<uint8_t> status(p.n * p.A * p.T, coco::kIgnored);
  std::vector<int64_t> npig(B * p.A, 0), rank(p.n);
  at::parallel_for(0, B, 64, [&](int64_t begin, int64_t end) {
    MatchScratch scratch;
    for (int64_t b = begin; b < end; ++b) {
      const Group& g = groups[b];
      for (int64_t d = g.d0; d < g.d1; ++d) rank[d] = d - g.d0;
      match_group(p, g, det_order.data(), gt_order.data(), status.data(), npig.data() + b * p.A, scratch);
    }
  });
  // The groups of class k are the run with key / I == k (groups are sorted by key).
  std::vector<int64_t> first(p.K + 1, B);
  for (int64_t b = B - 1; b >= 0; --b) first[groups[b].key / p.I] = b;
  for (int64_t k = p.K - 1; k >= 0; --k) first[k] = std::min(first[k], first[k + 1]);
  at::parallel_for(0, p.K, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> rc, pr;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t b0 = first[k], b1 = first[k + 1];
      if (b0 == b1) continue;
      const RankedClass ranked = rank_class(p, groups[b0].d0, groups[b1 - 1].d1, det_order.data(), rank.data(),
                                            status.data());
      for (int64_t a = 0; a < p.A; ++a) {
        int64_t counted = 0;
        for (int64_t b = b0; b < b1; ++b) counted += npig[b * p.A + a];
        if (counted > 0) accumulate_class(p, out, k, a, counted, ranked, rc, pr);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> coco_evaluate_cpu(
    const at::Tensor& det_boxes, const at::Tensor& det_scores, const at::Tensor& det_labels,
    const at::Tensor& det_images, const at::Tensor& gt_boxes, const at::Tensor& gt_labels, const at::Tensor& gt_images,
    const at::Tensor& gt_iscrowd, const at::Tensor& gt_areas, const at::Tensor& iou_thresholds,
    const at::Tensor& recall_thresholds, const at::Tensor& area_ranges, c10::IntArrayRef max_dets,
    int64_t num_images, int64_t num_classes) {
  check_coco_evaluate_args(det_boxes, det_scores, det_labels, det_images, gt_boxes, gt_labels, gt_images,
                           gt_iscrowd, gt_areas, iou_thresholds, recall_thresholds, area_ranges, max_dets,
                           num_images, num_classes);
  const int64_t T = iou_thresholds.size(0), R = recall_thresholds.size(0), A = area_ranges.size(0);
  const int64_t M = max_dets.size();
  const auto options = det_boxes.options().dtype(at::kDouble);
  at::Tensor precision, recall;
  try {
    precision = at::full({T, R, num_classes, A, M}, -1.0, options);
    recall = at::full({T, num_classes, A, M}, -1.0, options);
  } catch (const c10::Error& e) {  // name the argument rather than the allocator
    TORCH_CHECK_VALUE(false, "num_classes = ", num_classes, ": the precision array does not fit in memory (",
                      e.what_without_backtrace(), ")");
  }
  const auto c = [](const at::Tensor& t) { return t.contiguous(); };
  const at::Tensor db = c(det_boxes), ds = c(det_scores), dl = c(det_labels), di = c(det_images), gb = c(gt_boxes),
                   gl = c(gt_labels), gi = c(gt_images), gc = c(gt_iscrowd), ga = c(gt_areas), it = c(iou_thresholds),
                   rt = c(recall_thresholds), ar = c(area_ranges);
  const Problem p = make_problem(db, ds, dl, di, gb, gl, gi, gc, ga, it, rt, ar, max_dets, num_images, num_classes);
  check_values(p);
  evaluate(p, Curves{precision.mutable_data_ptr<double>(), recall.mutable_data_ptr<double>(), M});
  return {precision, recall};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmtl, CPU, m) { m.impl("coco_evaluate", &coco_evaluate_cpu); }

}  // namespace fastmtl
