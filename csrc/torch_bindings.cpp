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

  // ---- moe ----
}

TORCH_LIBRARY_IMPL(ferrum_ext, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("qk_norm_rope_write_cache", &qk_norm_rope_write_cache);
  m.impl("greedy_argmax", &greedy_argmax);
}

// `import ferrum_ext._C` runs the registrations above; the module itself is empty.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
