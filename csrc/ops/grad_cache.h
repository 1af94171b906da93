#pragma once
// A cache of large CPU gradient buffers (see grad_cache.cpp).
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastmtl {

// An uninitialized CPU tensor of `shape`, from the cache when one of its byte size is there; its
// memory returns to the cache when the tensor dies. Only for outputs that the caller writes in
// full (a recycled buffer holds old values). Buffers under 1 MiB, non-CPU options and sanitizer
// builds take at::empty.
at::Tensor cached_cpu_empty(at::IntArrayRef shape, const at::TensorOptions& options);

// Frees every cached buffer; returns the bytes freed.
int64_t empty_grad_cache();

// Sets the limit of the cache in MiB (0 turns it off), evicting what no longer fits; returns the
// previous limit.
int64_t set_grad_cache_limit(int64_t megabytes);

}  // namespace fastmtl
