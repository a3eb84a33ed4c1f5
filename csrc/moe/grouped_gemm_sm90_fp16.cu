// Hopper grouped GEMM of the MoE prefill tier, fp16 (see grouped_gemm_sm90_impl.cuh).
#include "moe/grouped_gemm_sm90_impl.cuh"

namespace ferrum::moe {
FERRUM_MOE_SM90_DEFINE(fp16, cutlass::half_t, false)
}  // namespace ferrum::moe
