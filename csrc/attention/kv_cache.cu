// Launcher of write_kv_cache.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "attention/kv_cache.cuh"
#include "common/checks.h"
#include "common/dispatch.h"
#include "common/launch.h"
#include "ops.h"

void write_kv_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                    at::Tensor& value_cache, const at::Tensor& slot_mapping, c10::string_view layout) {
  FERRUM_CHECK_CUDA(key);
  FERRUM_CHECK_SAME_DEVICE(value, key);
  FERRUM_CHECK_SAME_DEVICE(key_cache, key);
  FERRUM_CHECK_SAME_DEVICE(value_cache, key);
  FERRUM_CHECK_SAME_DEVICE(slot_mapping, key);
  FERRUM_CHECK_SAME_DTYPE(value, key);
  FERRUM_CHECK_SAME_DTYPE(key_cache, key);
  FERRUM_CHECK_SAME_DTYPE(value_cache, key);
  FERRUM_CHECK_DIM(key, 3);
  FERRUM_CHECK_DIM(value, 3);
  FERRUM_CHECK_CONTIGUOUS(key_cache);
  FERRUM_CHECK_CONTIGUOUS(value_cache);
  FERRUM_CHECK_LAST_DIM_CONTIGUOUS(key);
  FERRUM_CHECK_LAST_DIM_CONTIGUOUS(value);
  TORCH_CHECK(value.sizes() == key.sizes(), "value: expected shape ", key.sizes(), ", got ", value.sizes());
  TORCH_CHECK(slot_mapping.scalar_type() == at::kInt || slot_mapping.scalar_type() == at::kLong,
              "slot_mapping: expected dtype int32 or int64, got ", slot_mapping.scalar_type());
  FERRUM_CHECK_CONTIGUOUS(slot_mapping);
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == key.size(0), "slot_mapping: expected shape [",
              key.size(0), "], got ", slot_mapping.sizes());
  const bool vllm = layout == "vllm";
  TORCH_CHECK(vllm || layout == "nhd", "layout: expected \"vllm\" or \"nhd\", got \"", layout, "\"");
  const int kvh = static_cast<int>(key.size(1)), D = static_cast<int>(key.size(2));
  const int bs = static_cast<int>(vllm ? value_cache.size(3) : key_cache.size(1));
  TORCH_CHECK(D % 8 == 0, "key: head_dim must be a multiple of 8, got ", D);
  if (vllm) {
    const int x = 16 / static_cast<int>(key.element_size());
    TORCH_CHECK(key_cache.dim() == 5 && key_cache.size(1) == kvh && key_cache.size(2) == D / x &&
                    key_cache.size(3) == bs && key_cache.size(4) == x,
                "key_cache: expected the \"vllm\" shape [num_blocks, ", kvh, ", ", D / x, ", ", bs, ", ", x, "], got ",
                key_cache.sizes());
    TORCH_CHECK(value_cache.dim() == 4 && value_cache.size(1) == kvh && value_cache.size(2) == D &&
                    value_cache.size(0) == key_cache.size(0),
                "value_cache: expected the \"vllm\" shape [", key_cache.size(0), ", ", kvh, ", ", D, ", ", bs,
                "], got ", value_cache.sizes());
  } else {
    TORCH_CHECK(key_cache.dim() == 4 && key_cache.size(2) == kvh && key_cache.size(3) == D,
                "key_cache: expected the \"nhd\" shape [num_blocks, block_size, ", kvh, ", ", D, "], got ",
                key_cache.sizes());
    TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), "value_cache: expected shape ", key_cache.sizes(),
                ", got ", value_cache.sizes());
  }
  const int64_t T = key.size(0);
  if (T == 0 || kvh == 0) return;

  ferrum::attn::KvWriteParams p;
  p.key = key.data_ptr();
  p.value = value.data_ptr();
  p.key_cache = key_cache.data_ptr();
  p.value_cache = value_cache.data_ptr();
  p.slot_mapping = slot_mapping.data_ptr();
  p.key_token_stride = key.stride(0);
  p.key_head_stride = key.stride(1);
  p.value_token_stride = value.stride(0);
  p.value_head_stride = value.stride(1);
  p.num_kv_heads = kvh;
  p.head_dim = D;
  p.block_size = bs;
  p.vllm_layout = vllm;

  const c10::cuda::OptionalCUDAGuard guard(key.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool idx64 = slot_mapping.scalar_type() == at::kLong;
  FERRUM_DISPATCH_HALF_TYPES(key.scalar_type(), "write_kv_cache", [&] {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = ferrum::is_aligned16(key.data_ptr()) && ferrum::is_aligned16(value.data_ptr()) &&
                     key.stride(0) % kVec == 0 && key.stride(1) % kVec == 0 && value.stride(0) % kVec == 0 &&
                     value.stride(1) % kVec == 0;
    const int threads = ferrum::threads_for(static_cast<int64_t>(kvh) * D / (vec ? kVec : 1), 256);
    if (vec) {
      if (idx64) ferrum::attn::write_kv_cache_kernel<scalar_t, int64_t, kVec><<<T, threads, 0, stream>>>(p);
      else ferrum::attn::write_kv_cache_kernel<scalar_t, int32_t, kVec><<<T, threads, 0, stream>>>(p);
    } else {
      if (idx64) ferrum::attn::write_kv_cache_kernel<scalar_t, int64_t, 1><<<T, threads, 0, stream>>>(p);
      else ferrum::attn::write_kv_cache_kernel<scalar_t, int32_t, 1><<<T, threads, 0, stream>>>(p);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
