// A cache of large CPU gradient buffers. The fused anchor losses return a dense gradient (58 MB
// for yolov5's three scales at batch 16); glibc serves buffers over 32 MB with a fresh mmap and
// unmaps them on free, so every backward paid for the page faults of a new buffer: 13-15 ms of
// the 20 ms a fused loss took on the 2-core CI machine. A training loop frees its gradient and
// asks for one of the same size the next step, so the cache keeps freed buffers (exact byte size,
// least recently freed evicted first) up to a limit: FASTMTL_GRAD_CACHE_MB, default 512; 0 turns
// it off; torch.ops.fastmtl._set_grad_cache_limit changes it at run time.
// torch.ops.fastmtl._empty_grad_cache() (fastmtl.empty_grad_cache) frees them. Like torch's CUDA
// caching allocator, the process's memory between steps stays at its peak. A buffer counts as
// allocated (for torch.profiler's memory figures) while a tensor holds it, as the CUDA caching
// allocator counts its blocks.
#include "grad_cache.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <cstdlib>
#include <iterator>
#include <list>
#include <mutex>
#include <utility>

namespace fastmtl {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;

struct Cache {
  std::mutex mu;
  std::list<std::pair<size_t, void*>> free;  // (bytes, block), most recently freed first
  size_t cached = 0;
  size_t limit = 0;
};

size_t limit_from_env() {
#if defined(__SANITIZE_ADDRESS__)
  return 0;  // AddressSanitizer must see every free
#else
  const char* v = std::getenv("FASTMTL_GRAD_CACHE_MB");
  const long long mb = v ? std::atoll(v) : 512;
  return mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
#endif
}

// Never destroyed: tensors may die during static destruction at exit.
Cache& cache() {
  static Cache* c = [] {
    auto* out = new Cache;
    out->limit = limit_from_env();
    return out;
  }();
  return *c;
}

void* take(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto it = c.free.begin(); it != c.free.end(); ++it) {
    if (it->first != bytes) continue;
    void* block = it->second;
    c.cached -= bytes;
    c.free.erase(it);
    return block;
  }
  return nullptr;
}

using Blocks = std::list<std::pair<size_t, void*>>;

void free_all(const Blocks& blocks) {
  for (const auto& e : blocks) c10::free_cpu(e.second);
}

// Moves the least recently freed blocks out until the cache fits its limit (lock held).
void evict_to_limit(Cache& c, Blocks& evicted) {
  while (c.cached > c.limit) {
    c.cached -= c.free.back().first;
    evicted.splice(evicted.end(), c.free, std::prev(c.free.end()));
  }
}

void give_back(void* block, size_t bytes) {
  c10::profiledCPUMemoryReporter().Delete(block);
  Cache& c = cache();
  Blocks evicted;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    c.free.emplace_front(bytes, block);
    c.cached += bytes;
    evict_to_limit(c, evicted);
  }
  free_all(evicted);  // outside the lock
}

size_t current_limit() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.limit;
}

}  // namespace

at::Tensor cached_cpu_empty(at::IntArrayRef shape, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (const int64_t s : shape) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  if (options.device().type() != at::kCPU || bytes < kMinBytes || current_limit() < bytes)
    return at::empty(shape, options);
  void* block = take(bytes);
  if (!block) block = c10::alloc_cpu(bytes);  // throws c10::Error when out of memory
  c10::profiledCPUMemoryReporter().New(block, bytes);
  return at::from_blob(block, shape, [bytes](void* p) { give_back(p, bytes); }, options);
}

int64_t empty_grad_cache() {
  Cache& c = cache();
  Blocks all;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    all.swap(c.free);
    c.cached = 0;
  }
  int64_t freed = 0;
  for (const auto& e : all) freed += static_cast<int64_t>(e.first);
  free_all(all);
  return freed;
}

int64_t set_grad_cache_limit(int64_t megabytes) {
  TORCH_CHECK_VALUE(megabytes >= 0 && megabytes < (int64_t(1) << 40), "megabytes must be in [0, 2^40), got ",
                    megabytes);
  Cache& c = cache();
  Blocks evicted;
  int64_t previous = 0;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    previous = static_cast<int64_t>(c.limit >> 20);
#if !defined(__SANITIZE_ADDRESS__)
    c.limit = static_cast<size_t>(megabytes) << 20;
#endif
    evict_to_limit(c, evicted);
  }
  free_all(evicted);
  return previous;
}

}  // namespace fastmtl

TORCH_LIBRARY_FRAGMENT(fastmtl, m) {
  // Frees the cached CPU gradient buffers of the fused losses (csrc/ops/grad_cache.cpp); returns
  // the bytes freed.
  m.def("_empty_grad_cache() -> int", &fastmtl::empty_grad_cache);
  // Sets the cache's limit in MiB (0: off; sanitizer builds keep it off); returns the previous one.
  m.def("_set_grad_cache_limit(int megabytes) -> int", &fastmtl::set_grad_cache_limit);
}
