// Host-side helpers shared by launchers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>

namespace ferrum {

// The stride between consecutive rows when `t` is viewed as [rows, t.size(-1)]
// with a unit last stride: any stride for 2-D tensors, contiguous leading
// dimensions otherwise.
inline int64_t row_stride(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() >= 1, name, ": expected at least 1 dimension");
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) <= 1, name, ": expected a unit stride in the last dimension, got strides ",
              t.strides());
  if (t.dim() == 1) return t.size(0);
  // Leading dimensions must flatten into one row index of stride t.stride(-2).
  for (int64_t d = t.dim() - 3; d >= 0; --d) {
    TORCH_CHECK(t.size(d) <= 1 || t.stride(d) == t.stride(d + 1) * t.size(d + 1), name,
                ": leading dimensions must flatten into rows (got shape ", t.sizes(), ", strides ", t.strides(), ")");
  }
  return t.size(-2) <= 1 ? t.size(-1) : t.stride(-2);
}

// Whether rows of `elems_per_row` elements starting at `ptr`, `stride` elements
// apart, can all be accessed `vec` elements at a time with natural alignment.
inline bool rows_vectorizable(const void* ptr, int64_t stride, int64_t elems_per_row, int vec,
                              int elem_size) {
  return reinterpret_cast<uintptr_t>(ptr) % (vec * elem_size) == 0 && stride % vec == 0 &&
         elems_per_row % vec == 0;
}

// Threads for a CTA that walks `work_items` items: a multiple of 32, at most max_threads.
inline int threads_for(int64_t work_items, int max_threads = 1024) {
  const int64_t rounded = (work_items + 31) / 32 * 32;
  return static_cast<int>(std::clamp<int64_t>(rounded, 32, max_threads));
}

}  // namespace ferrum
