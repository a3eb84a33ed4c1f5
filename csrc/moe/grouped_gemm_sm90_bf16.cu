// Hopper grouped GEMM of the MoE prefill tier, bf16 (see grouped_gemm_sm90_impl.cuh).
#include "moe/grouped_gemm_sm90_impl.cuh"

namespace ferrum::moe {
FERRUM_MOE_SM90_DEFINE(bf16, cutlass::bfloat16_t, false)
}  // namespace ferrum::moe
