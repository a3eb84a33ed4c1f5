// Launchers of every op, as registered in torch_bindings.cpp. Each checks its
// arguments, guards the device, and launches on the current stream.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

// ---- layers ----------------------------------------------------------------
void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps);
void fused_add_rms_norm(at::Tensor& out, const at::Tensor& input, at::Tensor& residual,
                        const at::Tensor& weight, double eps);
void silu_and_mul(at::Tensor& out, const at::Tensor& input);
void qk_norm_rope_write_cache(at::Tensor& q_out, const at::Tensor& qkv, const at::Tensor& positions,
                              const at::Tensor& cos, const at::Tensor& sin, at::Tensor& key_cache,
                              at::Tensor& value_cache, const at::Tensor& slot_mapping, c10::string_view layout,
                              int64_t num_heads, int64_t num_kv_heads,
                              const c10::optional<at::Tensor>& q_norm_weight,
                              const c10::optional<at::Tensor>& k_norm_weight, double eps);

// ---- sampling --------------------------------------------------------------
void greedy_argmax(at::Tensor& ids, const std::optional<at::Tensor>& values, const at::Tensor& logits,
                   const std::optional<at::Tensor>& allowed);

// ---- attention -------------------------------------------------------------
void write_kv_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                    at::Tensor& value_cache, const at::Tensor& slot_mapping, c10::string_view layout);
void paged_attention_decode(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& block_tables,
                            const at::Tensor& seq_lens, double scale, c10::string_view layout, int64_t max_seq_len,
                            int64_t num_splits);
void paged_attention_varlen(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                            const at::Tensor& value_cache, const at::Tensor& cu_seqlens_q,
                            const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale,
                            c10::string_view layout, bool tiled_q4, int64_t max_seq_len, int64_t max_q_len,
                            int64_t num_splits, int64_t prefill_path);

// ---- moe -------------------------------------------------------------------
void moe_route(at::Tensor& weights, at::Tensor& ids, const at::Tensor& router_logits, int64_t top_k,
               bool renormalize);
void moe_align(at::Tensor& sorted_pair_ids, at::Tensor& block_expert_ids, at::Tensor& num_padded,
               const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m);
void fused_moe(at::Tensor& out, const at::Tensor& hidden, const at::Tensor& w13, const at::Tensor& w2,
               const at::Tensor& topk_weights, const at::Tensor& topk_ids, int64_t gemv_threshold,
               int64_t prefill_threshold, c10::string_view tier, bool w13_interleaved);
