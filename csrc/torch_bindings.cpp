// The table of contents of the native code: every op's schema, one line of
// comment each, and its CUDA implementation. Out-variants write into a
// caller-owned `out`; the Python wrappers in ferrum_ext/ops.py allocate it.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(ferrum_ext, m) {
  // ---- layers ----
  // out = rms_norm(input) * weight; input [..., hidden], rows may be strided.
  m.def("rms_norm(Tensor! out, Tensor input, Tensor weight, float eps) -> ()");
  // residual += input (in place); out = rms_norm(residual) * weight.
  m.def("fused_add_rms_norm(Tensor! out, Tensor input, Tensor! residual, Tensor weight, float eps) -> ()");
  // out = silu(input[..., :d]) * input[..., d:]; input [..., 2d].
  m.def("silu_and_mul(Tensor! out, Tensor input) -> ()");
  // Split qkv [T, (H + 2 KVH) D]; optional per-head RMSNorm of q and k; half-split RoPE;
  // q into q_out [T, H, D], k and v into the paged cache at slot_mapping (negative = skip).
  m.def("qk_norm_rope_write_cache(Tensor! q_out, Tensor qkv, Tensor positions, Tensor cos, Tensor sin, "
        "Tensor! key_cache, Tensor! value_cache, Tensor slot_mapping, str layout, int num_heads, "
        "int num_kv_heads, Tensor? q_norm_weight, Tensor? k_norm_weight, float eps) -> ()");

  // ---- sampling ----
  // ids = torch.argmax(logits, -1) exactly; values = logits at ids; only allowed != 0 compete (none: -1, -inf).
  m.def("greedy_argmax(Tensor(a!) ids, Tensor(b!)? values, Tensor logits, Tensor? allowed) -> ()");

  // ---- attention ----
  // Scatter key/value [T, kv_heads, D] into the paged caches at slot_mapping (negative = skip).
  m.def("write_kv_cache(Tensor key, Tensor value, Tensor! key_cache, Tensor! value_cache, Tensor slot_mapping, str layout) -> ()");
  // One query token per sequence against its paged KV cache; split-K when num_splits (0 = auto) > 1.
  m.def("paged_attention_decode(Tensor! out, Tensor query, Tensor key_cache, Tensor value_cache, Tensor block_tables, Tensor seq_lens, float scale, str layout, int max_seq_len, int num_splits) -> ()");
  // Packed causal queries [M, H, D] per cu_seqlens_q against the paged cache; tiled_q4: 4 queries per CTA
  // (64 query rows per CTA when max_q_len >= 64; max_q_len < 0: unknown). Chunks of >= 64 tokens take the
  // 128-row prefill kernel when max_q_len >= 64; prefill_path: 0 auto, 1 force it, 2 previous kernels only.
  m.def("paged_attention_varlen(Tensor! out, Tensor query, Tensor key_cache, Tensor value_cache, Tensor cu_seqlens_q, Tensor seq_lens, Tensor block_tables, float scale, str layout, bool tiled_q4, int max_seq_len, int max_q_len, int num_splits, int prefill_path=0) -> ()");

  // ---- moe ----
  // Softmax (fp32) over experts, top-k by repeated arg-max (ties to the lower id), optional renormalisation.
  m.def("moe_route(Tensor! weights, Tensor! ids, Tensor router_logits, int top_k, bool renormalize) -> ()");
  // Pairs p = t*k + j grouped by expert (ascending p inside), runs padded to block_m with the sentinel T*k.
  m.def("moe_align(Tensor! sorted_pair_ids, Tensor! block_expert_ids, Tensor! num_padded, Tensor topk_ids, "
        "int num_experts, int block_m) -> ()");
  // out = sum_j w[t,j] * (silu(x W13g^T) * (x W13u^T)) W2^T of expert ids[t,j]; tier picked from T and thresholds;
  // w13's gate and up rows in Hugging Face order or interleaved by 8 (w13_interleaved, ops.interleave_gate_up).
  m.def("fused_moe(Tensor! out, Tensor hidden, Tensor w13, Tensor w2, Tensor topk_weights, Tensor topk_ids, "
        "int gemv_threshold, int prefill_threshold, str tier, bool w13_interleaved) -> ()");
}

TORCH_LIBRARY_IMPL(ferrum_ext, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("write_kv_cache", &write_kv_cache);
  m.impl("paged_attention_decode", &paged_attention_decode);
  m.impl("paged_attention_varlen", &paged_attention_varlen);
  m.impl("qk_norm_rope_write_cache", &qk_norm_rope_write_cache);
  m.impl("greedy_argmax", &greedy_argmax);
  m.impl("moe_route", &moe_route);
  m.impl("moe_align", &moe_align);
  m.impl("fused_moe", &fused_moe);
}

// `import ferrum_ext._C` runs the registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
