// Hopper (sm_90a) prefill tier of fused_moe: the whole layer after routing, on CUTLASS grouped GEMMs.
#pragma once

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace ferrum::moe {

// Built with sm_90a device code (FERRUM_SM90A_BUILT) and `device` is compute capability 9.x.
bool prefill_sm90_supported(int device);

// out = fused_moe(hidden, w13, w2, topk_weights, topk_ids, w13_interleaved); arguments already checked
// by fused_moe.
void fused_moe_prefill_sm90(at::Tensor& out, const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                            const at::Tensor& topk_weights, const at::Tensor& topk_ids, bool w13_interleaved,
                            cudaStream_t stream);

}  // namespace ferrum::moe
