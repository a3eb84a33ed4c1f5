// SwiGLU activation: out[r, i] = silu(x[r, i]) * x[r, d + i] for a row [gate | up].
//
// Bytes: rows * 2d * sizeof(T) read, rows * d * sizeof(T) written.
// Grid: (rows, column chunks); each thread handles VEC consecutive columns.
#pragma once

#include "common/types.cuh"

namespace ferrum {

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

template <typename T, int VEC>
__global__ void silu_and_mul_kernel(T* __restrict__ out, const T* __restrict__ in, int64_t in_row_stride,
                                    int d) {
  const int64_t row = blockIdx.x;
  const T* gate = in + row * in_row_stride;
  const T* up = gate + d;
  T* y = out + row * static_cast<int64_t>(d);
  const int num_vecs = d / VEC;
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < num_vecs; i += gridDim.y * blockDim.x) {
    const auto g = load_packed<T, VEC>(gate + i * VEC);
    const auto u = load_packed<T, VEC>(up + i * VEC);
    Packed<T, VEC> r;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      // Round silu(gate) to T before the product, as torch's silu(x) * y does.
      const float s = to_float(from_float<T>(silu(to_float(g.v[j]))));
      r.v[j] = from_float<T>(s * to_float(u.v[j]));
    }
    store_packed(y + i * VEC, r);
  }
}

}  // namespace ferrum
