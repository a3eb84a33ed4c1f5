"""Probe: which load flavour and CTA layout streams B=256 fp32 argmax rows fastest on this GPU.

Builds a few variants of a one-row-per-CTA (or flattened, chunked) max-reduction with
torch.utils.cpp_extension.load_inline and times them like the benchmarks (cold L2 by a
256 MiB write, median of 50), plus the same with a clean-read flush to show what the
flush's dirty lines cost. Not part of the package; run on a GPU:

    python scripts/probe_argmax.py
"""

import json
import os
import sys

import torch
from torch.utils.cpp_extension import load_inline

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchmarks.harness import BenchContext  # noqa: E402

CUDA_SRC = r"""
#include <cstdint>
#include <torch/extension.h>
#include <c10/cuda/CUDAStream.h>

template <int kMode>
__device__ __forceinline__ uint4 load16(const float* p, uint64_t policy) {
  uint4 r;
  if constexpr (kMode == 0) {
    r = __ldcs(reinterpret_cast<const uint4*>(p));
  } else if constexpr (kMode == 1) {
    asm volatile("ld.global.cs.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  } else if constexpr (kMode == 2) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.L2::cache_hint.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4], %5;"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p), "l"(policy));
  }
  return r;
}

__device__ __forceinline__ uint32_t code_of(float x) {
  const uint32_t u = __float_as_uint(__fadd_rn(x, 0.0f));
  const uint32_t c = u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
  return isnan(x) ? 0xFFFFFFFFu : c;
}

// CTA b handles vector chunks b, b + gridDim.x, ... of `chunk_vecs` vectors each (a chunk
// never crosses a row: rows are V / 4 vectors, chunk_vecs divides it); writes key per chunk.
template <int kMode, int kUnroll>
__global__ void __launch_bounds__(256) probe_kernel(const float* x, int64_t num_chunks, int chunk_vecs,
                                                    int row_vecs, unsigned long long* keys) {
  uint64_t policy = 0;
  if constexpr (kMode == 3) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  __shared__ unsigned long long warp_keys[8];
  for (int64_t chunk = blockIdx.x; chunk < num_chunks; chunk += gridDim.x) {
    const float* base = x + chunk * int64_t(chunk_vecs) * 4;
    const int64_t row = chunk * chunk_vecs / row_vecs;
    const int first = static_cast<int>(chunk * chunk_vecs - row * row_vecs) * 4;
    uint32_t best = 0; int idx = -1;
    for (int v0 = threadIdx.x; v0 < chunk_vecs; v0 += 256 * kUnroll) {
      uint4 buf[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int v = v0 + u * 256;
        if (v < chunk_vecs) buf[u] = load16<kMode>(base + int64_t(v) * 4, policy);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int v = v0 + u * 256;
        if (v < chunk_vecs) {
          const uint32_t w[4] = {buf[u].x, buf[u].y, buf[u].z, buf[u].w};
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            const uint32_t c = code_of(__uint_as_float(w[j]));
            if (c > best) { best = c; idx = first + v * 4 + j; }
          }
        }
      }
    }
    unsigned long long key = (static_cast<unsigned long long>(best) << 32) | static_cast<uint32_t>(~idx);
    for (int o = 16; o > 0; o >>= 1) {
      const unsigned long long other = __shfl_xor_sync(0xffffffffu, key, o);
      key = other > key ? other : key;
    }
    if (threadIdx.x % 32 == 0) warp_keys[threadIdx.x / 32] = key;
    __syncthreads();
    if (threadIdx.x < 32) {
      key = threadIdx.x < 8 ? warp_keys[threadIdx.x] : 0ull;
      for (int o = 16; o > 0; o >>= 1) {
        const unsigned long long other = __shfl_xor_sync(0xffffffffu, key, o);
        key = other > key ? other : key;
      }
      if (threadIdx.x == 0) keys[chunk] = key;
    }
    __syncthreads();
  }
}

template <int kMode, int kUnroll>
void launch(const torch::Tensor& x, torch::Tensor& keys, int64_t chunks_per_row, int64_t grid) {
  const int row_vecs = static_cast<int>(x.size(1) / 4);
  const int64_t num_chunks = x.size(0) * chunks_per_row;
  probe_kernel<kMode, kUnroll><<<grid, 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.data_ptr<float>(), num_chunks, static_cast<int>(row_vecs / chunks_per_row), row_vecs,
      reinterpret_cast<unsigned long long*>(keys.data_ptr()));
}

void probe(torch::Tensor x, torch::Tensor keys, int64_t mode, int64_t unroll, int64_t chunks_per_row, int64_t grid) {
#define CASE(M, U) if (mode == M && unroll == U) return launch<M, U>(x, keys, chunks_per_row, grid);
  CASE(0, 8) CASE(1, 8) CASE(2, 8) CASE(3, 8) CASE(0, 16) CASE(1, 16) CASE(2, 16) CASE(3, 16)
#undef CASE
  TORCH_CHECK(false, "unknown variant");
}
"""
CPP_SRC = "void probe(torch::Tensor x, torch::Tensor keys, int64_t mode, int64_t unroll, int64_t chunks_per_row, int64_t grid);"
MODES = {0: "ld.cs", 1: "ld.cs.256B", 2: "nc.256B", 3: "nc.policy_evict_first.256B"}


def main():
    ext = load_inline("probe_argmax", CPP_SRC, cuda_sources=CUDA_SRC, functions=["probe"],
                      extra_cuda_cflags=["-O3", "-arch=sm_90a"], verbose=False)
    ctx = BenchContext()
    B, V = 256, 151936  # V / 4 = 37984 vectors = 2^5 * 1187: chunks per row 1, 2, 4, 8, 16, 32
    sets = [torch.randn(B, V, device="cuda") for _ in range(4)]
    keys = torch.empty(B * 32, dtype=torch.int64, device="cuda")
    want = [torch.argmax(x, -1) for x in sets]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    clean = torch.empty(128 << 20, dtype=torch.uint8, device="cuda")
    results = []

    def timed(label, fn, check=None):
        t = ctx.time(fn, [(x,) for x in sets])
        ctx_clean = ctx.time(lambda x: (clean.sum(), fn(x)), [(x,) for x in sets])
        # The clean-read variant includes clean.sum(); time it alone and subtract.
        t_sum = ctx.time(lambda: clean.sum())
        row = {"variant": label, "us": round(t.median_us, 2), "TB/s": round(B * V * 4 / t.median_us / 1e6, 3),
               "clean_us": round(ctx_clean.median_us - t_sum.median_us, 2)}
        results.append(row)
        print(json.dumps(row), flush=True)

    timed("torch.argmax", lambda x: torch.argmax(x, -1))
    for mode in MODES:
        for unroll in (8, 16):
            for cpr, grid in ((1, B * 1), (32, B * 32), (32, sms * 4), (8, B * 8)):
                def fn(x, mode=mode, unroll=unroll, cpr=cpr, grid=grid):
                    ext.probe(x, keys, mode, unroll, cpr, grid)
                fn(sets[0])
                # keys are uint64: flip the top bit so int64 order is their order
                k = (keys[: B * cpr] ^ torch.iinfo(torch.int64).min).view(B, cpr).max(-1).values
                ids = (~(k & 0xFFFFFFFF)).to(torch.int64) & 0xFFFFFFFF
                assert torch.equal(ids, want[0]), f"variant {mode},{unroll},{cpr} wrong"
                timed(f"{MODES[mode]} unroll{unroll} chunks/row {cpr} grid {grid}", fn)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "probe_argmax.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
