// Launchers of paged_attention_decode and paged_attention_varlen: argument
// checks, the split-K plan (host values only, so a CUDA graph captured for an
// upper bound `max_seq_len` replays correctly), scratch, dispatch.
//
// Split plan: base = query tiles that can hold rows (a host bound: the grid's
// tile count, or B * ceil(max_q_len / tokens per tile) when smaller) * kv_heads
// CTAs; slots = SMs * resident CTAs
// per SM. For each candidate s <= min(ceil(max_seq_len / 256), 256):
// tokens_per_split = round_up(ceil(max_seq_len / s), 64), real splits =
// ceil(max_seq_len / tokens_per_split), cost = ceil(base * real / slots) waves x
// tokens_per_split (+ 64 when split, for the merge); the cheapest wins, ties go
// to fewer splits. One split writes `out` directly (no scratch, no merge). Scratch (caching allocator, per call):
//   partial out fp32 [rows, heads, splits, head_dim] + lse fp32 [rows, heads, splits]
//   = rows * heads * splits * (head_dim + 1) * 4 bytes.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cmath>

#include "attention/paged_attention.cuh"
#include "attention/paged_attention_launch.h"
#include "attention/paged_prefill.cuh"
#include "attention/paged_prefill_launch.h"
#include "attention/tile_list.cuh"
#include "common/checks.h"
#include "common/device_info.h"
#include "common/tensor_map.h"
#include "ops.h"

namespace {

using ferrum::attn::AttnParams;

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

// TMA maps of the "nhd" caches viewed as [tokens][kv heads][D], boxes of one head's block
// split into 64-dim halves (paged_attention.cuh); false where the kernel must keep cp.async.
bool nhd_tensor_maps(AttnParams& p, const at::Tensor& key_cache, const at::Tensor& value_cache, int D, int kvh,
                     int bs) {
  const int64_t tokens = key_cache.size(0) * bs;
  if (D % 64 != 0 || tokens >= (int64_t{1} << 31) || ferrum::cc_major(key_cache.get_device()) < 9) return false;
  const uint64_t dims[3] = {uint64_t(D), uint64_t(kvh), uint64_t(tokens)};
  const uint64_t strides[2] = {uint64_t(D) * 2, uint64_t(kvh) * D * 2};
  const uint32_t box[3] = {64, 1, uint32_t(bs)};
  return ferrum::encode_tensor_map_3d_u16_sw128(&p.k_map, key_cache.data_ptr(), dims, strides, box) &&
         ferrum::encode_tensor_map_3d_u16_sw128(&p.v_map, value_cache.data_ptr(), dims, strides, box);
}

// Fills the cache geometry fields of `p` after checking the caches against `query` [*, H, D].
void check_and_fill_cache(AttnParams& p, const at::Tensor& query, const at::Tensor& key_cache,
                          const at::Tensor& value_cache, const at::Tensor& block_tables,
                          c10::string_view layout, int64_t max_seq_len) {
  FERRUM_CHECK_CUDA(query);
  FERRUM_CHECK_SAME_DEVICE(key_cache, query);
  FERRUM_CHECK_SAME_DEVICE(value_cache, query);
  FERRUM_CHECK_SAME_DEVICE(block_tables, query);
  FERRUM_CHECK_SAME_DTYPE(key_cache, query);
  FERRUM_CHECK_SAME_DTYPE(value_cache, query);
  FERRUM_CHECK_DTYPE(block_tables, at::kInt);
  FERRUM_CHECK_DIM(query, 3);
  FERRUM_CHECK_DIM(block_tables, 2);
  FERRUM_CHECK_CONTIGUOUS(key_cache);
  FERRUM_CHECK_CONTIGUOUS(value_cache);
  TORCH_CHECK(block_tables.stride(1) == 1, "block_tables: expected a unit stride in the last dimension");
  TORCH_CHECK(query.stride(2) == 1 && query.stride(1) % 8 == 0 && query.stride(0) % 8 == 0 &&
                  ferrum::is_aligned16(query.data_ptr()),
              "query: expected unit last stride and 16-byte aligned rows, got strides ", query.strides());
  const int H = static_cast<int>(query.size(1)), D = static_cast<int>(query.size(2));
  TORCH_CHECK(D == 64 || D == 96 || D == 128 || D == 256, "query: unsupported head_dim ", D,
              " (expected 64, 96, 128 or 256)");
  const bool vllm = layout == "vllm";
  TORCH_CHECK(vllm || layout == "nhd", "layout: expected \"vllm\" or \"nhd\", got \"", layout, "\"");
  int kvh, bs;
  if (vllm) {
    const int x = 16 / static_cast<int>(query.element_size());
    TORCH_CHECK(key_cache.dim() == 5 && key_cache.size(2) == D / x && key_cache.size(4) == x,
                "key_cache: expected the \"vllm\" shape [num_blocks, num_kv_heads, ", D / x, ", block_size, ", x,
                "], got ", key_cache.sizes());
    kvh = static_cast<int>(key_cache.size(1));
    bs = static_cast<int>(key_cache.size(3));
    TORCH_CHECK(value_cache.dim() == 4 && value_cache.size(0) == key_cache.size(0) && value_cache.size(1) == kvh &&
                    value_cache.size(2) == D && value_cache.size(3) == bs,
                "value_cache: expected the \"vllm\" shape [", key_cache.size(0), ", ", kvh, ", ", D, ", ", bs,
                "], got ", value_cache.sizes());
    p.k_block_stride = key_cache.stride(0);
    p.v_block_stride = value_cache.stride(0);
  } else {
    TORCH_CHECK(key_cache.dim() == 4 && key_cache.size(3) == D,
                "key_cache: expected the \"nhd\" shape [num_blocks, block_size, num_kv_heads, ", D, "], got ",
                key_cache.sizes());
    TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), "value_cache: expected shape ", key_cache.sizes(),
                ", got ", value_cache.sizes());
    kvh = static_cast<int>(key_cache.size(2));
    bs = static_cast<int>(key_cache.size(1));
    p.k_block_stride = key_cache.stride(0);
    p.v_block_stride = value_cache.stride(0);
  }
  TORCH_CHECK(bs == 8 || bs == 16 || bs == 32, "key_cache: unsupported block_size ", bs, " (expected 8, 16 or 32)");
  TORCH_CHECK(kvh > 0 && H % kvh == 0 && H / kvh <= 16, "query: num_heads ", H,
              " must be a multiple of num_kv_heads ", kvh, " with a group of at most 16");
  TORCH_CHECK(key_cache.size(0) > 0, "key_cache: expected at least one block");
  TORCH_CHECK(max_seq_len >= 0 && max_seq_len <= (int64_t{1} << 30), "max_seq_len: expected 0 <= max_seq_len, got ",
              max_seq_len);
  TORCH_CHECK((max_seq_len + bs - 1) / bs <= block_tables.size(1), "block_tables: ", block_tables.size(1),
              " columns are narrower than ceil(max_seq_len / block_size) = ", (max_seq_len + bs - 1) / bs);
  p.q = query.data_ptr();
  p.q_row_stride = query.stride(0);
  p.q_head_stride = query.stride(1);
  p.k_cache = key_cache.data_ptr();
  p.v_cache = value_cache.data_ptr();
  p.block_tables = block_tables.data_ptr<int>();
  p.bt_stride = block_tables.stride(0);
  p.num_heads = H;
  p.num_kv_heads = kvh;
  p.group = H / kvh;
  p.block_size = bs;
  p.log2_block_size = log2_exact(bs);
  p.max_blocks = static_cast<int>(block_tables.size(1));
  p.vllm_layout = vllm;
  p.nhd_tma = !vllm && nhd_tensor_maps(p, key_cache, value_cache, D, kvh, bs);
}

void check_out(const at::Tensor& out, const at::Tensor& query) {
  FERRUM_CHECK_SAME_DEVICE(out, query);
  FERRUM_CHECK_SAME_DTYPE(out, query);
  FERRUM_CHECK_CONTIGUOUS(out);
  TORCH_CHECK(out.sizes() == query.sizes(), "out: expected shape ", query.sizes(), ", got ", out.sizes());
}

// Sets p.num_splits / p.tokens_per_split (see the file comment).
void plan_splits(AttnParams& p, int64_t base_ctas, int64_t max_seq_len, int slots, int64_t forced) {
  constexpr int64_t kTok = ferrum::attn::kStageTokens;
  const int64_t max_useful = std::max<int64_t>(1, (max_seq_len + kTok - 1) / kTok);
  int64_t splits;
  if (forced > 0) {
    splits = std::min<int64_t>({forced, max_useful, ferrum::attn::kMaxSplits});
  } else {
    // Equal-work CTAs run in waves of `slots`: pick the split count with the least
    // (waves x tokens per CTA), + one stage for the merge when split; ties -> fewer splits.
    const int64_t cap = std::min<int64_t>({(max_seq_len + 255) / 256, int64_t{ferrum::attn::kMaxSplits}});
    const int64_t base = std::max<int64_t>(base_ctas, 1);
    int64_t best_cost = -1;
    splits = 1;
    for (int64_t s = 1; s <= std::max<int64_t>(cap, 1); ++s) {
      const int64_t tps = ((std::max<int64_t>(max_seq_len, 1) + s - 1) / s + kTok - 1) / kTok * kTok;
      const int64_t real = (std::max<int64_t>(max_seq_len, 1) + tps - 1) / tps;
      const int64_t waves = (base * real + slots - 1) / slots;
      const int64_t cost = waves * tps + (real > 1 ? kTok : 0);
      if (best_cost < 0 || cost < best_cost) {
        best_cost = cost;
        splits = real;
      }
      if (base * s >= 4 * int64_t{slots}) break;  // more splits only add waves
    }
  }
  int64_t tps = (std::max<int64_t>(max_seq_len, 1) + splits - 1) / splits;
  tps = (tps + kTok - 1) / kTok * kTok;
  splits = std::max<int64_t>(1, (max_seq_len + tps - 1) / tps);
  p.num_splits = static_cast<int>(splits);
  p.tokens_per_split = static_cast<int>(tps);
}

// Tiles of a tile list that can hold rows: the list's size, or fewer when every
// sequence has at most max_q_len (> 0) query tokens. Only the split plan uses it
// (an empty tile exits at once), so a wrong max_q_len costs speed, not results.
int64_t busy_tiles(int64_t num_tiles, int64_t num_seqs, int64_t max_q_len, int qpc) {
  if (max_q_len <= 0) return num_tiles;
  return std::min(num_tiles, num_seqs * ((max_q_len + qpc - 1) / qpc));
}

// Launches the kernel over `num_tiles` tiles (plus the merge when split); the
// split plan counts `plan_tiles` of them as busy.
template <typename T, int D, int MT>
void run(AttnParams& p, const at::Tensor& query, int num_tiles, int64_t plan_tiles, int64_t rows_total,
         int64_t max_seq_len, int64_t forced_splits, cudaStream_t stream) {
  const int device = query.get_device();
  const int per_sm = ferrum::attn::attention_ctas_per_sm<T, D, MT>(p.vllm_layout);
  plan_splits(p, plan_tiles * p.num_kv_heads, max_seq_len, ferrum::sm_count(device) * per_sm, forced_splits);
  const int64_t kv_bytes = std::min<int64_t>(p.num_seqs, plan_tiles) * p.num_kv_heads * max_seq_len * D * 2 * 2;
  p.evict_first_kv = kv_bytes <= ferrum::attn::kEvictFirstMaxBytes;
  at::Tensor part_out, part_lse;
  if (p.num_splits > 1) {
    const auto f32 = query.options().dtype(at::kFloat);
    part_out = at::empty({rows_total, p.num_heads, p.num_splits, D}, f32);
    part_lse = at::empty({rows_total, p.num_heads, p.num_splits}, f32);
    p.part_out = part_out.data_ptr<float>();
    p.part_lse = part_lse.data_ptr<float>();
  }
  ferrum::attn::launch_attention<T, D, MT>(p, num_tiles, stream);
  if (p.num_splits > 1) ferrum::attn::launch_merge<T, D>(p, static_cast<int>(rows_total), stream);
}

#define FERRUM_DISPATCH_HEAD_DIM(D_VALUE, ...)                                         \
  switch (D_VALUE) {                                                                   \
    case 64: { constexpr int kD = 64; __VA_ARGS__(); break; }                          \
    case 96: { constexpr int kD = 96; __VA_ARGS__(); break; }                          \
    case 128: { constexpr int kD = 128; __VA_ARGS__(); break; }                        \
    case 256: { constexpr int kD = 256; __VA_ARGS__(); break; }                        \
    default: TORCH_CHECK(false, "query: unsupported head_dim ", D_VALUE);              \
  }

#define FERRUM_DISPATCH_ATTN_DTYPE(TYPE, ...)                                          \
  switch (TYPE) {                                                                      \
    case at::ScalarType::Half: { using scalar_t = __half; __VA_ARGS__(); break; }      \
    case at::ScalarType::BFloat16: { using scalar_t = __nv_bfloat16; __VA_ARGS__(); break; } \
    default: TORCH_CHECK(false, "query: expected dtype float16 or bfloat16, got ", TYPE); \
  }

// ---- chunked prefill: long chunks -> paged_prefill_kernel ------------------
//
// Sequences with q_len >= kMinChunk (64) take the prefill kernel (128 query
// rows per CTA, paged_prefill.cuh); the others (decode rows, short chunks) take
// paged_attention_kernel in the same op call, through a tile list that skips
// the long sequences (plain: 1 token per tile, tiled: 4). Both lists are built
// on the device from cu_seqlens_q, with host bounds from (M, B) only:
//   prefill tiles <= (M + (TQ - 1) * min(B, M / 64)) / TQ,  TQ = 128 / group tokens per tile
//   short tiles   <= min(M, (min(M, 63 B) + (qpc - 1) B) / qpc)
// Order on the stream: short kernel, its split-K merge (which also rewrites
// the long rows with junk when split), then the prefill kernel (the final
// writer of the long rows).
// Taken when max_q_len >= 64 (force: max_q_len unknown counts as M) and, unless
// forced, when the prefill grid bound covers every SM at least once.
template <typename T, int D>
void launch_prefill_part(const AttnParams& p, const at::Tensor& out, const at::Tensor& cu_seqlens_q, int tq,
                         int64_t max_seq_len, int num_tiles, cudaStream_t stream) {
  namespace pf = ferrum::attn::prefill;
  at::Tensor buf = at::empty({static_cast<int64_t>(num_tiles) * 4 + p.num_seqs + 1},
                             cu_seqlens_q.options().dtype(at::kInt));
  int4* tiles = reinterpret_cast<int4*>(buf.data_ptr<int>());
  ferrum::attn::build_prefill_tiles_kernel<<<1, 1024, 0, stream>>>(
      p.cu_seqlens_q, p.seq_lens, p.num_seqs, pf::kMinChunk, tq,
      static_cast<int>(std::min<int64_t>(max_seq_len, int64_t{1} << 30)), buf.data_ptr<int>() + num_tiles * 4, tiles,
      num_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  pf::PrefillParams q{};
  q.q = p.q;
  q.out = out.data_ptr();
  q.k_cache = p.k_cache;
  q.v_cache = p.v_cache;
  q.block_tables = p.block_tables;
  q.seq_lens = p.seq_lens;
  q.tiles = tiles;
  q.q_row_stride = p.q_row_stride;
  q.q_head_stride = p.q_head_stride;
  q.out_row_stride = p.out_row_stride;
  q.out_head_stride = p.out_head_stride;
  q.k_block_stride = p.k_block_stride;
  q.v_block_stride = p.v_block_stride;
  q.bt_stride = p.bt_stride;
  q.num_kv_heads = p.num_kv_heads;
  q.group = p.group;
  q.block_size = p.block_size;
  q.log2_block_size = p.log2_block_size;
  q.max_blocks = p.max_blocks;
  q.vllm_layout = p.vllm_layout;
  // The "nhd" maps check_and_fill_cache encoded for the decode kernel fit the prefill
  // kernel as they are ([tokens][kv heads][D], boxes of one head's block x 64 dims).
  q.nhd_tma = p.nhd_tma;
  if (p.nhd_tma) {
    q.k_map = p.k_map;
    q.v_map = p.v_map;
  }
  q.scale_log2 = p.scale_log2;
  pf::launch_prefill<T, D>(q, num_tiles, stream);
}

// Returns false (nothing launched) when the prefill kernel is not to be used.
bool varlen_with_prefill_kernel(AttnParams& p, const at::Tensor& out, const at::Tensor& query,
                                const at::Tensor& cu_seqlens_q, bool tiled_q4, int64_t max_seq_len, int64_t max_q_len,
                                int64_t num_splits, bool force, cudaStream_t stream) {
  constexpr int kMin = ferrum::attn::prefill::kMinChunk;
  const int64_t M = query.size(0), B = p.num_seqs;
  const int64_t mq = max_q_len < 0 ? (force ? M : -1) : max_q_len;
  if (mq < kMin || M < kMin) return false;
  // 16-byte output rows (the epilogue stores uint4); else the previous kernels.
  if (!ferrum::is_aligned16(out.data_ptr()) || out.stride(0) % 8 != 0 || out.stride(1) % 8 != 0) return false;
  const int tq = ferrum::attn::prefill::kRowsPerCta / p.group;
  const int64_t b_long = std::min<int64_t>(B, M / kMin);
  const int64_t pf_tiles = (M + (tq - 1) * b_long) / tq;
  if (pf_tiles <= 0 || pf_tiles > (int64_t{1} << 30)) return false;
  if (!force && pf_tiles * p.num_kv_heads < ferrum::sm_count(query.get_device())) return false;

  // Short sequences: the previous kernel over a tile list without the long ones.
  const int qpc = tiled_q4 ? 4 : 1;
  const int mt = tiled_q4 ? (p.group <= 4 ? 1 : (p.group <= 8 ? 2 : 4)) : 1;
  const int64_t short_rows = std::min<int64_t>(M, (kMin - 1) * B);
  const int num_tiles = static_cast<int>(std::min<int64_t>(M, (short_rows + (qpc - 1) * B) / qpc));
  at::Tensor tiles = at::empty({std::max(num_tiles, 1), 4}, query.options().dtype(at::kInt));
  p.tiles = reinterpret_cast<const int4*>(tiles.data_ptr<int>());
  p.mode = ferrum::attn::kTileList;
  ferrum::attn::build_tiles_kernel<<<1, 1024, 0, stream>>>(p.cu_seqlens_q, p.num_seqs, qpc,
                                                          const_cast<int4*>(p.tiles), num_tiles, kMin - 1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  FERRUM_DISPATCH_ATTN_DTYPE(query.scalar_type(), [&] {
    FERRUM_DISPATCH_HEAD_DIM(static_cast<int>(query.size(2)), [&] {
      if (num_tiles > 0) {
        const int64_t plan = busy_tiles(num_tiles, B, std::min<int64_t>(mq, kMin - 1), qpc);
        if (mt == 1) run<scalar_t, kD, 1>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
        else if (mt == 2) run<scalar_t, kD, 2>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
        else run<scalar_t, kD, 4>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
      }
      launch_prefill_part<scalar_t, kD>(p, out, cu_seqlens_q, tq, max_seq_len, static_cast<int>(pf_tiles), stream);
    });
  });
  return true;
}

}  // namespace

void paged_attention_decode(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& block_tables,
                            const at::Tensor& seq_lens, double scale, c10::string_view layout, int64_t max_seq_len,
                            int64_t num_splits) {
  AttnParams p{};
  check_and_fill_cache(p, query, key_cache, value_cache, block_tables, layout, max_seq_len);
  check_out(out, query);
  FERRUM_CHECK_SAME_DEVICE(seq_lens, query);
  FERRUM_CHECK_DTYPE(seq_lens, at::kInt);
  FERRUM_CHECK_CONTIGUOUS(seq_lens);
  const int64_t B = query.size(0);
  TORCH_CHECK(seq_lens.dim() == 1 && seq_lens.size(0) == B, "seq_lens: expected shape [", B, "], got ",
              seq_lens.sizes());
  TORCH_CHECK(block_tables.size(0) == B, "block_tables: expected ", B, " rows, got ", block_tables.size(0));
  if (B == 0 || p.num_heads == 0) return;
  p.out = out.data_ptr();
  p.out_row_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.seq_lens = seq_lens.data_ptr<int>();
  p.num_seqs = static_cast<int>(B);
  p.mode = ferrum::attn::kTileDecode;
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);

  const c10::cuda::OptionalCUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FERRUM_DISPATCH_ATTN_DTYPE(query.scalar_type(), [&] {
    FERRUM_DISPATCH_HEAD_DIM(static_cast<int>(query.size(2)), [&] {
      run<scalar_t, kD, 1>(p, query, static_cast<int>(B), B, B, max_seq_len, num_splits, stream);
    });
  });
}

void paged_attention_varlen(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& cu_seqlens_q,
                            const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale,
                            c10::string_view layout, bool tiled_q4, int64_t max_seq_len, int64_t max_q_len,
                            int64_t num_splits, int64_t prefill_path) {
  AttnParams p{};
  check_and_fill_cache(p, query, key_cache, value_cache, block_tables, layout, max_seq_len);
  check_out(out, query);
  FERRUM_CHECK_SAME_DEVICE(seq_lens, query);
  FERRUM_CHECK_SAME_DEVICE(cu_seqlens_q, query);
  FERRUM_CHECK_DTYPE(seq_lens, at::kInt);
  FERRUM_CHECK_DTYPE(cu_seqlens_q, at::kInt);
  FERRUM_CHECK_CONTIGUOUS(seq_lens);
  FERRUM_CHECK_CONTIGUOUS(cu_seqlens_q);
  const int64_t B = seq_lens.dim() == 1 ? seq_lens.size(0) : -1;
  TORCH_CHECK(B >= 1, "seq_lens: expected shape [num_seqs] with num_seqs >= 1, got ", seq_lens.sizes());
  TORCH_CHECK(cu_seqlens_q.dim() == 1 && cu_seqlens_q.size(0) == B + 1, "cu_seqlens_q: expected shape [", B + 1,
              "], got ", cu_seqlens_q.sizes());
  TORCH_CHECK(block_tables.size(0) == B, "block_tables: expected ", B, " rows, got ", block_tables.size(0));
  const int64_t M = query.size(0);
  if (M == 0 || p.num_heads == 0) return;
  TORCH_CHECK(M < (int64_t{1} << 31), "query: too many rows");
  p.out = out.data_ptr();
  p.out_row_stride = out.stride(0);
  p.out_head_stride = out.stride(1);
  p.seq_lens = seq_lens.data_ptr<int>();
  p.cu_seqlens_q = cu_seqlens_q.data_ptr<int>();
  p.num_seqs = static_cast<int>(B);
  p.scale_log2 = static_cast<float>(scale * M_LOG2E);

  TORCH_CHECK(prefill_path >= 0 && prefill_path <= 2, "prefill_path: expected 0 (auto), 1 (prefill kernel) or 2 "
              "(previous kernels only), got ", prefill_path);

  const c10::cuda::OptionalCUDAGuard guard(query.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (prefill_path != 2 && varlen_with_prefill_kernel(p, out, query, cu_seqlens_q, tiled_q4, max_seq_len, max_q_len,
                                                      num_splits, prefill_path == 1, stream)) {
    return;
  }
  // Tiled: qpc consecutive query tokens of a sequence per CTA, so each K/V
  // element is read once for all of them: 4 by default; with a host bound
  // max_q_len > 4, up to 64 query rows per CTA (qpc = 64 / group', group' =
  // group rounded up to a power of two, capped by max_q_len rounded up to a
  // power of two: speculative verify of 8 tokens reads K/V once, not twice).
  at::Tensor tiles;
  int num_tiles = static_cast<int>(M);
  int64_t plan = M;
  int mt = 1;
  if (tiled_q4) {
    int qpc = 4;
    if (max_q_len > 4) {
      int g2 = 1, q2 = 1;
      while (g2 < p.group) g2 <<= 1;
      while (q2 < max_q_len && q2 < 64) q2 <<= 1;
      qpc = std::max(4, std::min(64 / g2, q2));
    }
    const int rows = qpc * p.group;
    mt = rows <= 16 ? 1 : (rows <= 32 ? 2 : 4);
    num_tiles = static_cast<int>(std::min<int64_t>(M, (M + (qpc - 1) * B) / qpc));
    plan = busy_tiles(num_tiles, B, max_q_len, qpc);
    tiles = at::empty({num_tiles, 4}, query.options().dtype(at::kInt));
    p.tiles = reinterpret_cast<const int4*>(tiles.data_ptr<int>());
    p.mode = ferrum::attn::kTileList;
    ferrum::attn::build_tiles_kernel<<<1, 1024, 0, stream>>>(p.cu_seqlens_q, p.num_seqs, qpc,
                                                            const_cast<int4*>(p.tiles), num_tiles);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    p.mode = ferrum::attn::kTileRow;
  }
  FERRUM_DISPATCH_ATTN_DTYPE(query.scalar_type(), [&] {
    FERRUM_DISPATCH_HEAD_DIM(static_cast<int>(query.size(2)), [&] {
      if (mt == 1) run<scalar_t, kD, 1>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
      else if (mt == 2) run<scalar_t, kD, 2>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
      else run<scalar_t, kD, 4>(p, query, num_tiles, plan, M, max_seq_len, num_splits, stream);
    });
  });
}
