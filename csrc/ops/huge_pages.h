#pragma once
// Transparent huge pages for large CPU outputs that a kernel writes whole, at once.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdlib>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastmtl {

// With FASTMTL_HUGE_PAGES=1, asks Linux to back the 2 MiB-aligned interior of a fresh CPU tensor
// with transparent huge pages before its first write: a 44 MB gradient then takes about 20 page
// faults instead of about 11,000. On the 2-core CI machine (THP "madvise", defrag "madvise"),
// allocating and filling the three gradients of yolov5's loss at batch 16 took 15 ms, 3 to 4 ms
// with the advice, and the fused yolov5-mode loss went from 23 to 11 ms median; but a third of
// the calls stalled near 50 ms in the kernel's page compaction. Hence opt-in, like torch's
// THP_MEM_ALLOC_ENABLE=1 (which advises every allocation). Only for outputs of 4 MiB or more
// that the caller writes in full; a no-op off Linux and where THP is "never".
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  static const bool enabled = [] {
    const char* v = std::getenv("FASTMTL_HUGE_PAGES");
    return v && v[0] == '1';
  }();
  const size_t bytes = t.nbytes();
  if (!enabled || !t.is_cpu() || bytes < 2 * kHuge) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice only
#else
  (void)t;
#endif
}

}  // namespace fastmtl
