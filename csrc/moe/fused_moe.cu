// Launcher of fused_moe.
//
// Tier from the host-known token count T, pairs P = T * k and the caller's thresholds ("auto"):
//   T < gemv_threshold            "gemv":    align -> weight-streaming GEMV (gate_up) -> down GEMV with
//                                            the combine folded in (I <= 1536; else GEMV + combine),
//                                            block_m 4
//   T < prefill_threshold         "small":   align -> mma.sync x2 (block_m 16, block_n 128) -> combine
//   otherwise                     "prefill": P >= kSm90MinPairs on sm_90a builds and 9.x devices: the
//                                            Hopper tier (CUTLASS grouped GEMMs, prefill_sm90.cu);
//                                            else align -> mma.sync x2 (block_m 16, 64, 96 or 128
//                                            by P / E, prefill_block_m) -> combine
// A forced tier runs exactly that path ("prefill_mma" / "prefill_sm90" force one of the two prefill
// tiers whatever P).
// Workspace from the caching allocator, sizes from (T, k, E, block_m) alone:
// h [T*k, I] + y [T*k, H] activations (no y in the GEMV tier at I <= 1536) and O(T*k + E*block_m)
// int32 ids (the Hopper tier: prefill_sm90.cu).
// No host sync.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <string>

#include "common/checks.h"
#include "common/dispatch.h"
#include "moe/combine.cuh"
#include "moe/moe_align_launch.h"
#include "moe/moe_common.cuh"
#include "moe/prefill_sm90.h"
#include "common/pdl_launch.h"
#include "ops.h"

namespace {

enum class Tier { kGemv, kSmall, kPrefill, kPrefillMma, kPrefillSm90 };

// "prefill" (and auto in its range) takes the Hopper tier from this many pairs P = T * k on, the
// mma.sync tier below. H100, Qwen3-30B-A3B (E 128, k 8, H 2048, I 768, bf16), us per layer
// (scripts/probe_moe_tiers.py, session 14): P = 8192 (T = 1024) mma.sync 493 vs Hopper 550,
// P = 12288 578 vs 586, P = 16384 715 vs 633, P = 32768 1241 vs 829.
constexpr int64_t kSm90MinPairs = 16384;

// Tile height of the mma.sync prefill tier from the pairs per expert P / E, which set both the
// padding rows computed and how often an expert's weights stream through a second tile. H100,
// Qwen3-30B-A3B, graph replay (scripts/probe_moe_tiers.py), us per layer:
//   P / E <= 8: the small tier's 16 rows (T = 64: 414 vs 421 with 64 rows; T = 128: 426 vs 433);
//   up to 56: 64 rows (T = 256: 437 vs 454 with 16 rows; T = 768, 48 per expert: 475 vs 481 with 96);
//   up to 192: 96 rows, one tile for nearly every expert at 64 per expert (T = 1024: 493 vs 513
//   with 64 rows; T = 1536: 578 vs 613);
//   beyond: 128 rows.
int64_t prefill_block_m(int64_t pairs, int64_t experts) {
  if (pairs <= 8 * experts) return ferrum::moe::kSmallBlockM;
  if (pairs < 56 * experts) return 64;
  return pairs < 192 * experts ? 96 : 128;
}

Tier pick_tier(int64_t num_tokens, int64_t gemv_threshold, int64_t prefill_threshold, const std::string& tier) {
  if (tier == "gemv") return Tier::kGemv;
  if (tier == "small") return Tier::kSmall;
  if (tier == "prefill") return Tier::kPrefill;
  if (tier == "prefill_mma") return Tier::kPrefillMma;
  if (tier == "prefill_sm90") return Tier::kPrefillSm90;
  TORCH_CHECK(tier == "auto",
              "tier: expected 'gemv', 'small', 'prefill', 'prefill_mma', 'prefill_sm90' or 'auto', got '",
              tier, "'");
  if (num_tokens < gemv_threshold) return Tier::kGemv;
  if (num_tokens < prefill_threshold) return Tier::kSmall;
  return Tier::kPrefill;
}

}  // namespace

void fused_moe(at::Tensor& out, const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
               const at::Tensor& topk_weights, const at::Tensor& topk_ids, int64_t gemv_threshold,
               int64_t prefill_threshold, c10::string_view tier, bool w13_interleaved) {
  FERRUM_CHECK_CUDA(hidden);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&out, &w13, &w2, &topk_weights, &topk_ids}) {
    TORCH_CHECK(t->device() == hidden.device(), "fused_moe: every tensor must be on ", hidden.device(), ", got ",
                t->device());
  }
  FERRUM_CHECK_DIM(hidden, 2);
  FERRUM_CHECK_DIM(w13, 3);
  FERRUM_CHECK_DIM(w2, 3);
  FERRUM_CHECK_DIM(topk_weights, 2);
  FERRUM_CHECK_CONTIGUOUS(hidden);
  FERRUM_CHECK_CONTIGUOUS(w13);
  FERRUM_CHECK_CONTIGUOUS(w2);
  FERRUM_CHECK_CONTIGUOUS(topk_weights);
  FERRUM_CHECK_CONTIGUOUS(topk_ids);
  FERRUM_CHECK_CONTIGUOUS(out);
  FERRUM_CHECK_SAME_DTYPE(w13, hidden);
  FERRUM_CHECK_SAME_DTYPE(w2, hidden);
  FERRUM_CHECK_SAME_DTYPE(out, hidden);
  FERRUM_CHECK_DTYPE(topk_weights, at::kFloat);
  FERRUM_CHECK_DTYPE(topk_ids, at::kInt);
  const int64_t T = hidden.size(0), H = hidden.size(1);
  const int64_t E = w13.size(0), I = w13.size(1) / 2;
  const int64_t top_k = topk_ids.dim() == 2 ? topk_ids.size(1) : -1;
  TORCH_CHECK(H % 64 == 0 && H > 0, "hidden: expected a hidden size that is a multiple of 64, got ", H);
  TORCH_CHECK(w13.size(1) % 2 == 0 && I % 64 == 0 && I > 0 && w13.size(2) == H,
              "w13: expected shape [E, 2 * I, ", H, "] with I a multiple of 64, got ", w13.sizes());
  TORCH_CHECK(w2.size(0) == E && w2.size(1) == H && w2.size(2) == I, "w2: expected shape [", E, ", ", H, ", ", I,
              "], got ", w2.sizes());
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.size(0) == T && top_k >= 1,
              "topk_ids: expected shape [", T, ", top_k], got ", topk_ids.sizes());
  TORCH_CHECK(topk_weights.sizes() == topk_ids.sizes(), "topk_weights: expected shape ", topk_ids.sizes(),
              ", got ", topk_weights.sizes());
  TORCH_CHECK(out.sizes() == hidden.sizes(), "out: expected shape ", hidden.sizes(), ", got ", out.sizes());
  TORCH_CHECK(T * top_k < (int64_t{1} << 30), "fused_moe: too many (token, expert) pairs");
  if (T == 0) return;

  const int64_t P = T * top_k;
  Tier t = pick_tier(T, gemv_threshold, prefill_threshold, std::string(tier));
  const bool bf16 = hidden.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || hidden.scalar_type() == at::kHalf, "hidden: expected dtype float16 or bfloat16, got ",
              hidden.scalar_type());

  // Hopper prefill tier (CUTLASS grouped GEMMs, prefill_sm90.cu): "prefill" takes it where supported
  // and P >= kSm90MinPairs.
  if (t == Tier::kPrefillSm90 || (t == Tier::kPrefill && P >= kSm90MinPairs &&
                                  ferrum::moe::prefill_sm90_supported(hidden.get_device()))) {
    const c10::cuda::OptionalCUDAGuard guard(hidden.device());
    ferrum::moe::fused_moe_prefill_sm90(out, hidden, w13, w2, topk_weights, topk_ids, w13_interleaved,
                                        c10::cuda::getCurrentCUDAStream());
    return;
  }
  if (t == Tier::kPrefillMma) t = Tier::kPrefill;

  const int64_t block_m = t == Tier::kGemv    ? ferrum::moe::kGemvBlockM
                         : t == Tier::kSmall ? ferrum::moe::kSmallBlockM
                                             : prefill_block_m(P, E);
  const int64_t max_padded = ferrum::moe::align_max_padded(P, E, block_m);
  const int64_t max_tiles = ferrum::moe::align_max_tiles(P, E, block_m);

  const c10::cuda::OptionalCUDAGuard guard(hidden.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t align_ws_ints = ferrum::moe::align_workspace_ints(P, E);
  at::Tensor ints = at::empty({max_padded + max_tiles + 1 + align_ws_ints}, topk_ids.options());
  int* sorted_ids = ints.data_ptr<int>();
  int* block_expert = sorted_ids + max_padded;
  int* num_padded = block_expert + max_tiles;
  int* align_ws = align_ws_ints > 0 ? num_padded + 1 : nullptr;
  at::Tensor h = at::empty({P, I}, hidden.options());

  ferrum::moe::launch_align(topk_ids.data_ptr<int>(), static_cast<int>(P), static_cast<int>(E),
                            static_cast<int>(block_m), sorted_ids, block_expert, num_padded, align_ws, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  ferrum::moe::GemmArgs args{};
  args.sorted_ids = sorted_ids;
  args.block_expert = block_expert;
  args.num_padded = num_padded;
  args.num_tiles = static_cast<int>(max_tiles);
  args.num_pairs = static_cast<int>(P);
  args.topk_ids = topk_ids.data_ptr<int>();
  args.num_experts = static_cast<int>(E);
  args.gate_up_interleaved = w13_interleaved;
  auto run_gemm = [&](bool gate_up) {
    if (t == Tier::kGemv) {
      ferrum::moe::launch_gemv(args, gate_up, bf16, stream);
    } else if (block_m == ferrum::moe::kSmallBlockM) {
      ferrum::moe::launch_mma_small(args, gate_up, bf16, stream);
    } else if (block_m == 64) {
      ferrum::moe::launch_mma_prefill64(args, gate_up, bf16, stream);
    } else if (block_m == 96) {
      ferrum::moe::launch_mma_prefill96(args, gate_up, bf16, stream);
    } else {
      ferrum::moe::launch_mma_prefill128(args, gate_up, bf16, stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };

  // gate_up: h[p] = silu(x[p / k] @ gate(w13[e])^T) * (x[p / k] @ up(w13[e])^T), gate/up rows in
  // Hugging Face order or interleaved by 8 (w13_interleaved).
  args.a = hidden.data_ptr();
  args.a_stride = H;
  args.a_row_div = static_cast<int>(top_k);
  args.w = w13.data_ptr();
  args.out = h.data_ptr();
  args.n_out = static_cast<int>(I);
  args.k = static_cast<int>(H);
  run_gemm(true);

  // GEMV tier: down and combine in one launch, out written directly (gemv_down_combine.cuh).
  if (t == Tier::kGemv) {
    const ferrum::moe::DownCombineArgs down{h.data_ptr(),
                                            w2.data_ptr(),
                                            out.data_ptr(),
                                            topk_weights.data_ptr<float>(),
                                            topk_ids.data_ptr<int>(),
                                            static_cast<int>(T),
                                            static_cast<int>(top_k),
                                            static_cast<int>(E),
                                            static_cast<int>(H),
                                            static_cast<int>(I)};
    if (ferrum::moe::launch_gemv_down_combine(down, bf16, stream)) {
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }

  // down: y[p] = h[p] @ w2[e]^T
  at::Tensor y = at::empty({P, H}, hidden.options());
  args.a = h.data_ptr();
  args.a_stride = I;
  args.a_row_div = 1;
  args.w = w2.data_ptr();
  args.out = y.data_ptr();
  args.n_out = static_cast<int>(H);
  args.k = static_cast<int>(I);
  run_gemm(false);

  FERRUM_DISPATCH_HALF_TYPES(hidden.scalar_type(), "fused_moe", [&] {
    // One 16-byte chunk of H per thread: grid (T, ceil(H / 8 / threads)), 128 threads (2 CTAs per
    // token at H 2048: more SMs' worth of loads in flight at tiny T).
    const int64_t chunks = H / 8;
    const int threads = static_cast<int>(std::min<int64_t>(128, (chunks + 31) / 32 * 32));
    const dim3 grid(static_cast<unsigned>(T), static_cast<unsigned>((chunks + threads - 1) / threads));
    ferrum::launch_pdl(ferrum::moe::moe_combine_kernel<scalar_t>, grid, dim3(threads), 0, stream,
                            reinterpret_cast<scalar_t*>(out.data_ptr()),
                            reinterpret_cast<const scalar_t*>(y.data_ptr()), topk_weights.data_ptr<float>(),
                            topk_ids.data_ptr<int>(), static_cast<int>(top_k), static_cast<int>(H),
                            static_cast<int>(E));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
