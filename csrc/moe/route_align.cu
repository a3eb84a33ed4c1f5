// Launchers for moe_route and moe_align.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "common/checks.h"
#include "common/dispatch.h"
#include "moe/moe_align_launch.h"
#include "common/pdl_launch.h"
#include "moe/route_align.cuh"
#include "ops.h"

namespace ferrum::moe {

int64_t align_max_padded(int64_t num_pairs, int64_t num_experts, int64_t block_m) {
  return num_pairs + std::min(num_experts, num_pairs) * (block_m - 1);
}

int64_t align_max_tiles(int64_t num_pairs, int64_t num_experts, int64_t block_m) {
  return (align_max_padded(num_pairs, num_experts, block_m) + block_m - 1) / block_m;
}

namespace {

// Multi-CTA split of moe_align (route_align.cuh): pairs per CTA (a multiple of the CTA's warps * 32)
// and the CTA count, or 0 CTAs where the one-CTA kernel runs.
struct AlignSplit {
  int chunk = 0;
  int ctas = 0;
};

AlignSplit align_split(int64_t num_pairs, int64_t num_experts) {
  AlignSplit s;
  if (num_pairs < kAlignMultiMinPairs || num_experts > kAlignMultiMaxExperts) return s;
  constexpr int64_t kGranule = kAlignMultiWarps * 32;
  int64_t chunk = std::max<int64_t>(kAlignMultiMinChunk, (num_pairs + kAlignMultiMaxCtas - 1) / kAlignMultiMaxCtas);
  chunk = (chunk + kGranule - 1) / kGranule * kGranule;
  s.chunk = static_cast<int>(chunk);
  s.ctas = static_cast<int>((num_pairs + chunk - 1) / chunk);
  return s;
}

}  // namespace

int64_t align_workspace_ints(int64_t num_pairs, int64_t num_experts) {
  const AlignSplit s = align_split(num_pairs, num_experts);
  return s.ctas == 0 ? 0 : (s.ctas + 3) * num_experts;
}

void launch_align(const int* ids, int num_pairs, int num_experts, int block_m, int* sorted_ids,
                  int* block_expert, int* num_padded, int* workspace, cudaStream_t stream) {
  const int max_padded = static_cast<int>(align_max_padded(num_pairs, num_experts, block_m));
  const int max_tiles = static_cast<int>(align_max_tiles(num_pairs, num_experts, block_m));
  const AlignSplit split = align_split(num_pairs, num_experts);
  if (split.ctas > 0 && workspace != nullptr) {
    // counts [ctas * E] | start [E] | ends [E] | total [E]
    int* counts = workspace;
    int* start = counts + static_cast<int64_t>(split.ctas) * num_experts;
    int* ends = start + num_experts;
    int* total = ends + num_experts;
    const dim3 block(kAlignMultiWarps * 32);
    launch_pdl(moe_align_count_kernel, dim3(split.ctas), block, static_cast<size_t>(num_experts) * sizeof(int),
               stream, ids, num_pairs, num_experts, split.chunk, counts);
    launch_pdl(moe_align_scan_kernel, dim3(1), dim3(1024), 0, stream, split.ctas, num_experts, block_m, counts,
               start, ends, total, num_padded);
    launch_pdl(moe_align_scatter_kernel, dim3(split.ctas), block,
               static_cast<size_t>(kAlignMultiWarps + 1) * num_experts * sizeof(int), stream, ids, num_pairs,
               num_experts, block_m, max_padded, max_tiles, split.chunk, static_cast<const int*>(counts),
               static_cast<const int*>(start), static_cast<const int*>(ends), static_cast<const int*>(total),
               static_cast<const int*>(num_padded), sorted_ids, block_expert);
    return;
  }
  if (num_pairs <= kAlignWarpMaxPairs) {  // decode-sized: one warp, same output
    launch_pdl(moe_align_warp_kernel, dim3(1), dim3(32), 0, stream, ids, num_pairs, num_experts, block_m,
               max_padded, max_tiles, sorted_ids, block_expert, num_padded);
    return;
  }
  // Per-warp histograms in at most 48 KiB of shared memory.
  const int warps = std::clamp(12288 / num_experts - 2, 1, 32);
  const size_t smem = static_cast<size_t>(warps + 2) * num_experts * sizeof(int);
  launch_pdl(moe_align_kernel, dim3(1), dim3(warps * 32), smem, stream, ids, num_pairs, num_experts, block_m,
             max_padded, max_tiles, sorted_ids, block_expert, num_padded);
}

}  // namespace ferrum::moe

void moe_route(at::Tensor& weights, at::Tensor& ids, const at::Tensor& router_logits, int64_t top_k,
               bool renormalize) {
  FERRUM_CHECK_CUDA(router_logits);
  FERRUM_CHECK_DIM(router_logits, 2);
  FERRUM_CHECK_LAST_DIM_CONTIGUOUS(router_logits);
  FERRUM_CHECK_SAME_DEVICE(weights, router_logits);
  FERRUM_CHECK_SAME_DEVICE(ids, router_logits);
  FERRUM_CHECK_DTYPE(weights, at::kFloat);
  FERRUM_CHECK_DTYPE(ids, at::kInt);
  FERRUM_CHECK_CONTIGUOUS(weights);
  FERRUM_CHECK_CONTIGUOUS(ids);
  const int64_t num_tokens = router_logits.size(0), num_experts = router_logits.size(1);
  TORCH_CHECK(num_experts >= 1 && num_experts <= ferrum::moe::kRouteMaxExperts,
              "router_logits: expected 1..512 experts, got ", num_experts);
  TORCH_CHECK(top_k >= 1 && top_k <= 16 && top_k <= num_experts, "top_k: expected 1..min(16, num_experts), got ",
              top_k);
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == num_tokens && weights.size(1) == top_k,
              "weights: expected shape [", num_tokens, ", ", top_k, "], got ", weights.sizes());
  TORCH_CHECK(ids.sizes() == weights.sizes(), "ids: expected shape ", weights.sizes(), ", got ", ids.sizes());
  if (num_tokens == 0) return;

  const c10::cuda::OptionalCUDAGuard guard(router_logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kWarps = 4;
  const unsigned grid = static_cast<unsigned>((num_tokens + kWarps - 1) / kWarps);
  FERRUM_DISPATCH_FLOAT_TYPES(router_logits.scalar_type(), "moe_route", [&] {
    auto launch = [&](auto kernel) {
      ferrum::launch_pdl(kernel, dim3(grid), dim3(kWarps * 32), 0, stream,
                              reinterpret_cast<const scalar_t*>(router_logits.data_ptr()), router_logits.stride(0),
                              static_cast<int>(num_tokens), static_cast<int>(num_experts), static_cast<int>(top_k),
                              renormalize, weights.data_ptr<float>(), ids.data_ptr<int>());
    };
    if (num_experts <= 128) {
      launch(ferrum::moe::moe_route_kernel<scalar_t, 4>);
    } else if (num_experts <= 256) {
      launch(ferrum::moe::moe_route_kernel<scalar_t, 8>);
    } else {
      launch(ferrum::moe::moe_route_kernel<scalar_t, 16>);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void moe_align(at::Tensor& sorted_pair_ids, at::Tensor& block_expert_ids, at::Tensor& num_padded,
               const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m) {
  FERRUM_CHECK_CUDA(topk_ids);
  FERRUM_CHECK_DTYPE(topk_ids, at::kInt);
  FERRUM_CHECK_CONTIGUOUS(topk_ids);
  for (const at::Tensor* t : {&sorted_pair_ids, &block_expert_ids, &num_padded}) {
    TORCH_CHECK(t->device() == topk_ids.device(), "moe_align outputs must be on ", topk_ids.device());
    TORCH_CHECK(t->scalar_type() == at::kInt && t->is_contiguous() && t->dim() == 1,
                "moe_align outputs must be contiguous 1-D int32 tensors");
  }
  TORCH_CHECK(num_experts >= 1 && num_experts <= 4096, "num_experts: expected 1..4096, got ", num_experts);
  TORCH_CHECK(block_m >= 1 && block_m <= 1024, "block_m: expected 1..1024, got ", block_m);
  const int64_t num_pairs = topk_ids.numel();
  TORCH_CHECK(num_pairs < (int64_t{1} << 30), "topk_ids: too many pairs (", num_pairs, ")");
  const int64_t max_padded = ferrum::moe::align_max_padded(num_pairs, num_experts, block_m);
  const int64_t max_tiles = ferrum::moe::align_max_tiles(num_pairs, num_experts, block_m);
  TORCH_CHECK(sorted_pair_ids.numel() == max_padded, "sorted_pair_ids: expected ", max_padded, " elements, got ",
              sorted_pair_ids.numel());
  TORCH_CHECK(block_expert_ids.numel() == max_tiles, "block_expert_ids: expected ", max_tiles, " elements, got ",
              block_expert_ids.numel());
  TORCH_CHECK(num_padded.numel() == 1, "num_padded: expected 1 element, got ", num_padded.numel());

  const c10::cuda::OptionalCUDAGuard guard(topk_ids.device());
  const int64_t ws_ints = ferrum::moe::align_workspace_ints(num_pairs, num_experts);
  at::Tensor workspace = at::empty({std::max<int64_t>(ws_ints, 1)}, topk_ids.options());
  ferrum::moe::launch_align(topk_ids.data_ptr<int>(), static_cast<int>(num_pairs), static_cast<int>(num_experts),
                            static_cast<int>(block_m), sorted_pair_ids.data_ptr<int>(),
                            block_expert_ids.data_ptr<int>(), num_padded.data_ptr<int>(),
                            ws_ints > 0 ? workspace.data_ptr<int>() : nullptr, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
