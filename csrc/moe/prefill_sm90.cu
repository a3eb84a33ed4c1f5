// Hopper prefill tier of fused_moe (tier "prefill" on sm_90a builds and 9.x devices, or forced
// with "prefill_sm90"):
//
//   moe_align (block_m = 1: valid pairs sorted by expert, no padding) -> expert offsets
//   -> gather xs[i] = hidden[token of sorted row i]                      [P, H]
//   -> grouped GEMM gu = xs @ w13[e]^T   (CUTLASS, TMA + wgmma)         [P, 2I]
//   -> h = silu(gu[:, :I]) * gu[:, I:]                                   [P, I]
//   -> grouped GEMM ys = h @ w2[e]^T     (ys reuses the xs buffer)       [P, H]
//   -> combine out[t] = sum_j w[t, j] * ys[inv[t*k + j]]
// With w13 interleaved (interleave_gate_up) the first GEMM's epilogue writes h itself
// (silu_mul_epilogue_sm90.cuh): no gu buffer, no silu pass.
//
// P = T * k. Sizes of every launch come from (T, k, E, H, I) alone; the per-expert row counts
// stay on the device (grouped GEMM shapes are written there by a kernel), so the step is
// capturable in a CUDA graph and never syncs. Workspace from the caching allocator:
// P*(H + 3I) activations (P*(H + I) interleaved) + (3P + E + 2) int32 (+ the multi-CTA align's
// (CTAs + 3) * E at P >= 4096) + two small GEMM scratch buffers.
// Extra traffic against the mma.sync tier: the gather (P*H written) and, unless w13 is interleaved,
// the gu round trip (P*2I written + read): ~0.3 GB at T = 4096 on Qwen3-30B-A3B, ~0.1 ms.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "common/device_info.h"
#include "common/dispatch.h"
#include "moe/grouped_gemm_sm90.h"
#include "moe/moe_align_launch.h"
#include "moe/prefill_sm90.cuh"
#include "moe/prefill_sm90.h"

namespace ferrum::moe {

bool grouped_gemm_sm90_built() {
#if defined(FERRUM_SM90A_BUILT)
  return true;
#else
  return false;
#endif
}

size_t grouped_gemm_sm90_scratch_bytes(const GroupedGemmSm90Args& args, bool dtype_bf16) {
  if (args.silu_mul) {
    return dtype_bf16 ? grouped_gemm_sm90_scratch_bytes_silu_bf16(args)
                      : grouped_gemm_sm90_scratch_bytes_silu_fp16(args);
  }
  return dtype_bf16 ? grouped_gemm_sm90_scratch_bytes_bf16(args) : grouped_gemm_sm90_scratch_bytes_fp16(args);
}

const char* grouped_gemm_sm90(const GroupedGemmSm90Args& args, bool dtype_bf16, void* scratch, size_t scratch_bytes,
                              cudaStream_t stream) {
  if (args.silu_mul) {
    return dtype_bf16 ? grouped_gemm_sm90_silu_bf16(args, scratch, scratch_bytes, stream)
                      : grouped_gemm_sm90_silu_fp16(args, scratch, scratch_bytes, stream);
  }
  return dtype_bf16 ? grouped_gemm_sm90_bf16(args, scratch, scratch_bytes, stream)
                    : grouped_gemm_sm90_fp16(args, scratch, scratch_bytes, stream);
}

bool prefill_sm90_supported(int device) { return grouped_gemm_sm90_built() && ferrum::cc_major(device) == 9; }

namespace {

// Gather in token order (each hidden row read once; moe_gather_tokens_kernel) instead of sorted-row
// order (moe_gather_rows_kernel, the GPU-verified original): flip to false to A/B or fall back.
constexpr bool kGatherByToken = true;

// Runs one grouped GEMM with its own scratch from the caching allocator.
void run_grouped_gemm(const GroupedGemmSm90Args& args, bool bf16, const at::Tensor& like, cudaStream_t stream) {
  const size_t bytes = grouped_gemm_sm90_scratch_bytes(args, bf16);
  at::Tensor scratch = at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))}, like.options().dtype(at::kByte));
  const char* err = grouped_gemm_sm90(args, bf16, scratch.data_ptr(), bytes, stream);
  TORCH_CHECK(err == nullptr, "fused_moe (prefill_sm90): ", err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void fused_moe_prefill_sm90(at::Tensor& out, const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
                            const at::Tensor& topk_weights, const at::Tensor& topk_ids, bool w13_interleaved,
                            cudaStream_t stream) {
  const int device = hidden.get_device();
  TORCH_CHECK(prefill_sm90_supported(device),
              "fused_moe: tier 'prefill_sm90' needs a compute capability 9.x GPU and an extension built for 9.0a "
              "(TORCH_CUDA_ARCH_LIST); built for sm_90a: ",
              grouped_gemm_sm90_built() ? "yes" : "no");
  const int64_t T = hidden.size(0), H = hidden.size(1);
  const int64_t E = w13.size(0), I = w13.size(1) / 2;
  const int64_t top_k = topk_ids.size(1);
  const int64_t P = T * top_k;
  const bool bf16 = hidden.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || hidden.scalar_type() == at::kHalf, "hidden: expected dtype float16 or bfloat16, got ",
              hidden.scalar_type());

  // int32: sorted [P] | block_expert [P] | num_valid [1] | inv [P] | offsets [E + 1] | align workspace
  const int64_t align_ws_ints = align_workspace_ints(P, E);
  at::Tensor ints = at::empty({3 * P + E + 2 + align_ws_ints}, topk_ids.options());
  int* sorted_ids = ints.data_ptr<int>();
  int* block_expert = sorted_ids + P;
  int* num_valid = block_expert + P;
  int* inv = num_valid + 1;
  int* offsets = inv + P;
  int* align_ws = align_ws_ints > 0 ? offsets + E + 1 : nullptr;
  at::Tensor xs = at::empty({P, H}, hidden.options());  // gathered rows; later ys
  at::Tensor h = at::empty({P, I}, hidden.options());

  // block_m = 1: align_max_padded = align_max_tiles = P, no padding rows. Launched with PDL (it waits
  // for its predecessor before reading ids); every kernel below is a plain launch, so each starts only
  // after the one before completed.
  launch_align(topk_ids.data_ptr<int>(), static_cast<int>(P), static_cast<int>(E), 1, sorted_ids, block_expert,
               num_valid, align_ws, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  {
    const int threads = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((std::max(P, E + 1) + threads - 1) / threads, 1024));
    moe_expert_offsets_kernel<<<blocks, threads, 0, stream>>>(block_expert, num_valid, static_cast<int>(E), offsets,
                                                              sorted_ids, inv);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const unsigned row_blocks = static_cast<unsigned>((P + kRowsPerCta - 1) / kRowsPerCta);

  FERRUM_DISPATCH_HALF_TYPES(hidden.scalar_type(), "fused_moe", [&] {
    if (kGatherByToken) {
      moe_gather_tokens_kernel<scalar_t><<<static_cast<unsigned>((T + kRowsPerCta - 1) / kRowsPerCta),
                                           kRowsPerCta * 32, 0, stream>>>(
          reinterpret_cast<const scalar_t*>(hidden.data_ptr()), static_cast<int>(T), static_cast<int>(H),
          static_cast<int>(top_k), static_cast<int>(E), topk_ids.data_ptr<int>(), inv,
          reinterpret_cast<scalar_t*>(xs.data_ptr()));
    } else {
      moe_gather_rows_kernel<scalar_t><<<row_blocks, kRowsPerCta * 32, 0, stream>>>(
          reinterpret_cast<const scalar_t*>(hidden.data_ptr()), static_cast<int>(H), static_cast<int>(top_k),
          sorted_ids, num_valid, reinterpret_cast<scalar_t*>(xs.data_ptr()), inv);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  GroupedGemmSm90Args args{};
  args.offsets = offsets;
  args.num_experts = static_cast<int>(E);
  args.device = device;
  args.sm_count = ferrum::sm_count(device);

  // gate_up (n = 2I, k = H): h = silu(gate) * up in the GEMM's epilogue (interleaved w13), else
  // gu = xs @ w13[e]^T and a row pass.
  args.a = xs.data_ptr();
  args.w = w13.data_ptr();
  args.n = static_cast<int>(2 * I);
  args.k = static_cast<int>(H);
  args.silu_mul = w13_interleaved;
  at::Tensor gu = w13_interleaved ? at::Tensor() : at::empty({P, 2 * I}, hidden.options());
  args.d = w13_interleaved ? h.data_ptr() : gu.data_ptr();
  run_grouped_gemm(args, bf16, ints, stream);
  if (!w13_interleaved) {
    FERRUM_DISPATCH_HALF_TYPES(hidden.scalar_type(), "fused_moe", [&] {
      moe_silu_mul_rows_kernel<scalar_t><<<row_blocks, kRowsPerCta * 32, 0, stream>>>(
          reinterpret_cast<const scalar_t*>(gu.data_ptr()), static_cast<int>(I), num_valid,
          reinterpret_cast<scalar_t*>(h.data_ptr()));
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // down: ys = h @ w2[e]^T (n = H, k = I), into the xs buffer (xs is dead after gate_up).
  at::Tensor& ys = xs;
  args.a = h.data_ptr();
  args.w = w2.data_ptr();
  args.d = ys.data_ptr();
  args.silu_mul = false;
  args.n = static_cast<int>(H);
  args.k = static_cast<int>(I);
  run_grouped_gemm(args, bf16, ints, stream);

  FERRUM_DISPATCH_HALF_TYPES(hidden.scalar_type(), "fused_moe", [&] {
    const int threads = static_cast<int>(std::min<int64_t>(256, (H / 8 + 31) / 32 * 32));
    moe_combine_sorted_kernel<scalar_t><<<static_cast<unsigned>(T), threads, 0, stream>>>(
        reinterpret_cast<scalar_t*>(out.data_ptr()), reinterpret_cast<const scalar_t*>(ys.data_ptr()),
        topk_weights.data_ptr<float>(), topk_ids.data_ptr<int>(), inv, static_cast<int>(top_k), static_cast<int>(H),
        static_cast<int>(E));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ferrum::moe
