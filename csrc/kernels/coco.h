#pragma once
// Torch-free pieces of COCO box evaluation with the rules of pycocotools' COCOeval: the IoU of
// xywh boxes (crowd ground truths divide by the detection's area), the greedy matching of one
// image and class at one area range and IoU threshold, and the precision envelope sampled at
// fixed recall points. Everything is float64, as pycocotools computes, so the results are equal.
//
// There is no CUDA kernel: the matching is a short, branchy, sequential loop per image and
// class, and an evaluation runs once per epoch on host-side annotations; a GPU would add copies
// and gain nothing over the parallel CPU loop.
#include <algorithm>
#include <cstdint>

namespace fastmtl {
namespace coco {

// What a detection counts as at one area range and IoU threshold.
enum Status : uint8_t { kFalsePositive = 0, kTruePositive = 1, kIgnored = 2 };

// IoU of a detection d and a ground truth g, both (x, y, w, h). No overlap (width or height
// <= 0) gives 0; a crowd ground truth divides by the detection's area, not the union.
inline double box_iou(const double* d, const double* g, bool crowd) {
  const double w = std::min(d[0] + d[2], g[0] + g[2]) - std::max(d[0], g[0]);
  if (w <= 0) return 0.0;
  const double h = std::min(d[1] + d[3], g[1] + g[3]) - std::max(d[1], g[1]);
  if (h <= 0) return 0.0;
  const double inter = w * h;
  const double det_area = d[2] * d[3];
  return inter / (crowd ? det_area : det_area + g[2] * g[3] - inter);
}

// Greedy matching of D detections (by decreasing score) with G ground truths visited in the
// order `visit` (the ones of the area range first, ignored ones last). iou is [D, G] in the
// ground truths' own order. Each detection takes, among the ground truths not yet taken (crowd
// ones can be taken again), the last visited one with the largest IoU >= threshold, trying the
// ignored ones only when no other matched; the outcome goes to status[d * stride].
// `taken` is scratch of G bytes.
inline void greedy_match(const double* iou, int64_t D, int64_t G, const int64_t* visit, const uint8_t* crowd,
                         const uint8_t* ignored, const uint8_t* det_outside, double threshold, uint8_t* taken,
                         uint8_t* status, int64_t stride) {
  std::fill(taken, taken + G, uint8_t(0));
  const double start = std::min(threshold, 1.0 - 1e-10);  // an IoU of 1 matches at threshold 1
  for (int64_t d = 0; d < D; ++d) {
    double best = start;
    int64_t m = -1;
    for (int64_t j = 0; j < G; ++j) {
      const int64_t g = visit[j];
      if (taken[g] && !crowd[g]) continue;
      if (m > -1 && !ignored[m] && ignored[g]) break;  // a real match beats any ignored one
      const double v = iou[d * G + g];
      if (v < best) continue;  // not `<=`: a later ground truth with an equal IoU wins
      best = v;
      m = g;
    }
    uint8_t s;
    if (m == -1) {
      s = det_outside[d] ? kIgnored : kFalsePositive;
    } else {
      taken[m] = 1;
      s = ignored[m] ? kIgnored : kTruePositive;
    }
    status[d * stride] = s;
  }
}

// Precision made non-increasing from the right and sampled at recall thresholds thr[0..R)
// (non-decreasing): out[r * out_stride] is the envelope at the first entry whose recall reaches
// thr[r]; entries no recall reaches are left as they are (0). rc and pr are the recall and
// precision after each of n entries (the caller passes the true positives only: the samples are
// the same); pr is overwritten.
inline void sample_precision(const double* rc, double* pr, int64_t n, const double* thr, int64_t R, double* out,
                             int64_t out_stride) {
  for (int64_t i = n - 1; i > 0; --i) pr[i - 1] = std::max(pr[i - 1], pr[i]);
  int64_t i = 0;
  for (int64_t r = 0; r < R; ++r) {
    while (i < n && rc[i] < thr[r]) ++i;
    if (i == n) break;
    out[r * out_stride] = pr[i];
  }
}

}  // namespace coco
}  // namespace fastmtl
