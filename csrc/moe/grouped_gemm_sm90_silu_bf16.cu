// Hopper grouped GEMM of the MoE prefill tier with the SiLU·mul epilogue (gate_up over an
// interleaved w13), bf16 (see grouped_gemm_sm90_impl.cuh).
#include "moe/grouped_gemm_sm90_impl.cuh"

namespace ferrum::moe {
FERRUM_MOE_SM90_DEFINE(silu_bf16, cutlass::bfloat16_t, true)
}  // namespace ferrum::moe
