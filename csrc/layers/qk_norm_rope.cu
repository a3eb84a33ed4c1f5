// Launcher for qk_norm_rope_write_cache.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common/checks.h"
#include "common/dispatch.h"
#include "common/launch.h"
#include "layers/qk_norm_rope.cuh"
#include "ops.h"

namespace {

void check_index(const at::Tensor& t, const char* name, int64_t tokens, const at::Tensor& qkv) {
  FERRUM_CHECK_SAME_DEVICE(t, qkv);
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, name,
              ": expected dtype int32 or int64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == tokens && t.is_contiguous(), name, ": expected a contiguous [",
              tokens, "] tensor, got shape ", t.sizes());
}

void check_norm_weight(const c10::optional<at::Tensor>& w, const char* name, const at::Tensor& qkv,
                       int64_t head_dim) {
  if (!w) return;
  FERRUM_CHECK_SAME_DEVICE(*w, qkv);
  TORCH_CHECK(w->scalar_type() == qkv.scalar_type(), name, ": expected dtype ", qkv.scalar_type(), ", got ",
              w->scalar_type());
  TORCH_CHECK(w->dim() == 1 && w->size(0) == head_dim && w->is_contiguous(), name,
              ": expected a contiguous [", head_dim, "] tensor, got shape ", w->sizes());
}

}  // namespace

void qk_norm_rope_write_cache(at::Tensor& q_out, const at::Tensor& qkv, const at::Tensor& positions,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& key_cache,
                              at::Tensor& value_cache, const at::Tensor& slot_mapping, c10::string_view layout,
                              int64_t num_heads, int64_t num_kv_heads,
                              const c10::optional<at::Tensor>& q_norm_weight,
                              const c10::optional<at::Tensor>& k_norm_weight, double eps) {
  FERRUM_CHECK_CUDA(qkv);
  FERRUM_CHECK_DIM(qkv, 2);
  TORCH_CHECK(qkv.stride(1) == 1, "qkv: expected a unit stride in the last dimension");
  TORCH_CHECK(num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0,
              "num_heads: expected a positive multiple of num_kv_heads, got ", num_heads, " and ", num_kv_heads);
  const int64_t tokens = qkv.size(0);
  const int64_t head_dim = qkv.size(1) / (num_heads + 2 * num_kv_heads);
  TORCH_CHECK(head_dim * (num_heads + 2 * num_kv_heads) == qkv.size(1) && head_dim % 2 == 0 &&
                  head_dim <= 2 * 32 * ferrum::kMaxRopePairsPerLane,
              "qkv: expected [T, (num_heads + 2 * num_kv_heads) * head_dim] with an even head_dim <= 256, got ",
              qkv.sizes());
  FERRUM_CHECK_SAME_DTYPE(q_out, qkv);
  FERRUM_CHECK_SAME_DEVICE(q_out, qkv);
  FERRUM_CHECK_CONTIGUOUS(q_out);
  TORCH_CHECK(q_out.sizes() == at::IntArrayRef({tokens, num_heads, head_dim}), "q_out: expected shape [", tokens,
              ", ", num_heads, ", ", head_dim, "], got ", q_out.sizes());
  check_index(positions, "positions", tokens, qkv);
  check_index(slot_mapping, "slot_mapping", tokens, qkv);
  TORCH_CHECK(positions.scalar_type() == slot_mapping.scalar_type(),
              "positions and slot_mapping must have the same dtype");
  TORCH_CHECK(cos.sizes() == sin.sizes(), "sin: expected the shape of cos ", cos.sizes(), ", got ", sin.sizes());
  for (const auto* table : {&cos, &sin}) {
    FERRUM_CHECK_SAME_DEVICE(*table, qkv);
    TORCH_CHECK(table->scalar_type() == at::kFloat && table->dim() == 2 && table->size(1) == head_dim / 2 &&
                    table->is_contiguous(),
                "cos/sin: expected contiguous float32 [max_positions, ", head_dim / 2, "], got ",
                table->scalar_type(), " ", table->sizes());
  }
  check_norm_weight(q_norm_weight, "q_norm_weight", qkv, head_dim);
  check_norm_weight(k_norm_weight, "k_norm_weight", qkv, head_dim);
  FERRUM_CHECK_SAME_DTYPE(key_cache, qkv);
  FERRUM_CHECK_SAME_DTYPE(value_cache, qkv);
  FERRUM_CHECK_CONTIGUOUS(key_cache);
  FERRUM_CHECK_CONTIGUOUS(value_cache);
  const bool vllm = layout == "vllm";
  TORCH_CHECK(vllm || layout == "nhd", "layout: expected \"vllm\" or \"nhd\", got \"", layout, "\"");
  const int64_t x = 16 / qkv.element_size();
  const int64_t block_size = vllm ? key_cache.size(3) : key_cache.size(1);
  if (vllm) {
    TORCH_CHECK(key_cache.dim() == 5 && key_cache.size(1) == num_kv_heads && key_cache.size(2) * x == head_dim &&
                    key_cache.size(4) == x,
                "key_cache: expected vllm layout [num_blocks, ", num_kv_heads, ", ", head_dim / x, ", block_size, ",
                x, "], got ", key_cache.sizes());
    TORCH_CHECK(value_cache.sizes() == at::IntArrayRef({key_cache.size(0), num_kv_heads, head_dim, block_size}),
                "value_cache: expected vllm layout [num_blocks, ", num_kv_heads, ", ", head_dim, ", ", block_size,
                "], got ", value_cache.sizes());
  } else {
    TORCH_CHECK(key_cache.dim() == 4 && key_cache.size(2) == num_kv_heads && key_cache.size(3) == head_dim,
                "key_cache: expected nhd layout [num_blocks, block_size, ", num_kv_heads, ", ", head_dim, "], got ",
                key_cache.sizes());
    TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), "value_cache: expected the shape of key_cache ",
                key_cache.sizes(), ", got ", value_cache.sizes());
  }
  if (tokens == 0) return;

  ferrum::QkNormRopeParams p{};
  p.qkv = qkv.data_ptr();
  p.qkv_row_stride = qkv.stride(0);
  p.positions = positions.data_ptr();
  p.slot_mapping = slot_mapping.data_ptr();
  p.index64 = positions.scalar_type() == at::kLong;
  p.cos = cos.data_ptr<float>();
  p.sin = sin.data_ptr<float>();
  p.max_positions = cos.size(0);
  p.q_norm_weight = q_norm_weight ? q_norm_weight->data_ptr() : nullptr;
  p.k_norm_weight = k_norm_weight ? k_norm_weight->data_ptr() : nullptr;
  p.q_out = q_out.data_ptr();
  p.key_cache = key_cache.data_ptr();
  p.value_cache = value_cache.data_ptr();
  p.num_heads = static_cast<int>(num_heads);
  p.num_kv_heads = static_cast<int>(num_kv_heads);
  p.head_dim = static_cast<int>(head_dim);
  p.block_size = static_cast<int>(block_size);
  p.vllm_layout = vllm;
  p.eps = static_cast<float>(eps);

  const c10::cuda::OptionalCUDAGuard guard(qkv.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  p.num_tokens = tokens;
  const auto aligned = [](const at::Tensor& x, int64_t bytes) {
    return reinterpret_cast<uintptr_t>(x.data_ptr()) % bytes == 0;
  };
  // v-element accesses of qkv rows, q and the caches.
  const auto vector_aligned = [&](int v) {
    const int64_t bytes = v * qkv.element_size();
    return qkv.stride(0) % v == 0 && aligned(qkv, bytes) && aligned(q_out, bytes) && aligned(key_cache, bytes) &&
           aligned(value_cache, bytes);
  };
  const int heads = static_cast<int>(num_heads + 2 * num_kv_heads);
  const dim3 block(ferrum::kQkNormRopeWarps * 32);

  // Heads of 64, 128 or 256 dims with 16-byte rows and tables: D / 16 lanes per head. A "vllm"
  // value cache is dim-major (a token's v is D scattered 2-byte stores): its v heads keep one warp
  // per head in a second launch. H100, 32q/4kv, D 128, T = 4096 / 16384, us: "nhd" 74.4 -> 44.9 /
  // 277.0 -> 156.5; "vllm" 79.6 -> 74.1 / 335.0 -> 286.2 (its v heads on the 16-lane path too:
  // 62.3 / 383.0).
  const bool vec_path = (head_dim == 64 || head_dim == 128 || head_dim == 256) && vector_aligned(8) &&
                        aligned(cos, 32) && aligned(sin, 32) && (!q_norm_weight || aligned(*q_norm_weight, 16)) &&
                        (!k_norm_weight || aligned(*k_norm_weight, 16));
  // Heads [0, vec_heads) of every token take the 16-lane kernel, the rest one warp each.
  const int vec_heads = !vec_path ? 0 : vllm ? static_cast<int>(num_heads + num_kv_heads) : heads;
  if (vec_heads > 0) {
    p.head_begin = 0;
    p.head_count = vec_heads;
    const int lanes_per_head = static_cast<int>(head_dim / 16);
    const int64_t heads_per_cta = ferrum::kQkNormRopeWarps * (32 / lanes_per_head);
    const dim3 grid(static_cast<unsigned>((tokens * vec_heads + heads_per_cta - 1) / heads_per_cta));
    FERRUM_DISPATCH_HALF_TYPES(qkv.scalar_type(), "qk_norm_rope_write_cache", [&] {
      switch (lanes_per_head) {
        case 4: ferrum::qk_norm_rope_write_cache_vec_kernel<scalar_t, 4><<<grid, block, 0, stream>>>(p); break;
        case 8: ferrum::qk_norm_rope_write_cache_vec_kernel<scalar_t, 8><<<grid, block, 0, stream>>>(p); break;
        default: ferrum::qk_norm_rope_write_cache_vec_kernel<scalar_t, 16><<<grid, block, 0, stream>>>(p);
      }
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (vec_heads == heads) return;

  // One warp per head; rotation pairs per lane per step: as many as divide D / 2 into whole warps
  // (1, 2 or 4) and keep the accesses aligned.
  const int64_t half = head_dim / 2;
  int vec = half % 128 == 0 ? 4 : half % 64 == 0 ? 2 : 1;
  while (vec > 1 && !vector_aligned(vec)) vec /= 2;
  p.head_begin = vec_heads;
  p.head_count = heads - vec_heads;
  const int64_t items = tokens * p.head_count;
  const dim3 grid(static_cast<unsigned>((items + ferrum::kQkNormRopeWarps - 1) / ferrum::kQkNormRopeWarps));
  FERRUM_DISPATCH_HALF_TYPES(qkv.scalar_type(), "qk_norm_rope_write_cache", [&] {
    switch (vec) {
      case 4: ferrum::qk_norm_rope_write_cache_kernel<scalar_t, 4><<<grid, block, 0, stream>>>(p); break;
      case 2: ferrum::qk_norm_rope_write_cache_kernel<scalar_t, 2><<<grid, block, 0, stream>>>(p); break;
      default: ferrum::qk_norm_rope_write_cache_kernel<scalar_t, 1><<<grid, block, 0, stream>>>(p);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
