// Host-side entry of the "stream" path of fused_moe (moe_stream.cu, kernels in stream.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace ferrum::moe {

// Arguments of both stream kernels.
struct StreamArgs {
  const void* x;              // hidden [T, H]
  const void* w13;            // [E, 2I, H]
  const void* w2;             // [E, H, I]
  void* h;                    // workspace [T * k, I]
  void* out;                  // [T, H]
  const float* topk_weights;  // [T * k]
  const int* topk_ids;        // [T * k]
  int num_tokens;
  int top_k;
  int num_experts;
  int hidden;                 // H (multiple of 64)
  int inter;                  // I (multiple of 64)
};

// Most (token, expert) pairs the stream path takes (T * top_k).
constexpr int kStreamPairLimit = 128;

// gate_up then down+combine, both with programmatic dependent launch on sm_90+ (pdl_launch.h).
void launch_stream(const StreamArgs& args, bool dtype_bf16, int num_sms, cudaStream_t stream);

}  // namespace ferrum::moe
