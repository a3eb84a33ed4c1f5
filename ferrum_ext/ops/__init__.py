"""Typed entry points of every op.

Each wrapper checks its arguments (on any device, so errors are testable on
CPU), allocates `out` when the caller gives none, and runs
torch.ops.ferrum_ext.<op>. Where the extension is not built it runs the twin in
ferrum_ext.reference instead. When it is built, each op also gets a CPU kernel
(the reference) and a fake kernel, so opcheck and torch.compile(fullgraph=True)
work on any device.
"""

from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.ops import attention, layers, moe, sampling
from ferrum_ext.ops.attention import check_kernel_support, paged_attention_decode, paged_attention_varlen, write_kv_cache
from ferrum_ext.ops.layers import fused_add_rms_norm, qk_norm_rope_write_cache, rms_norm, silu_and_mul
from ferrum_ext.ops.moe import fused_moe, interleave_gate_up, moe_align, moe_route
from ferrum_ext.ops.sampling import greedy_argmax

__all__ = [
    "check_kernel_support", "fused_add_rms_norm", "fused_moe", "greedy_argmax", "interleave_gate_up", "moe_align",
    "moe_route",
    "paged_attention_decode", "paged_attention_varlen", "qk_norm_rope_write_cache", "rms_norm", "silu_and_mul",
    "write_kv_cache",
]

if cuda_ops_available():
    for _family in (layers, attention, sampling, moe):
        _family.register()
