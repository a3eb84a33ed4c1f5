"""The ops the models call, and a log of which path each call took.

Each function runs `ferrum_ext.ops.<name>` (the CUDA kernel on GPU tensors with
the extension built, its reference twin otherwise) unless the activations are
fp32 and the kernel is fp16/bf16-only: then the reference twin runs, which is
the CPU path of the fp32 model tests. `PathLog` counts "op:detail" strings so
tests and the demo can see which kernel ran; the model decides the detail.
"""

from __future__ import annotations

from collections import Counter

import torch

from ferrum_ext import ops as _ops
from ferrum_ext import reference as _reference
from ferrum_ext._extension import cuda_ops_available

# Ops whose kernels also take fp32 activations.
_FP32_KERNELS = {"rms_norm", "fused_add_rms_norm", "silu_and_mul", "greedy_argmax", "moe_route"}


def _impl(name: str, tensor: torch.Tensor):
    if tensor.dtype == torch.float32 and name not in _FP32_KERNELS:
        return getattr(_reference, name), "reference"
    return getattr(_ops, name), "ops"


def backend(name: str, tensor: torch.Tensor) -> str:
    """'cuda' when the compiled kernel runs, 'reference' when a PyTorch twin does,
    'torch' for work that is no ferrum_ext op (e.g. torch.argmax on the host)."""
    if not hasattr(_ops, name):
        return "torch"
    _, source = _impl(name, tensor)
    return "cuda" if source == "ops" and tensor.is_cuda and cuda_ops_available() else "reference"


class PathLog:
    """Counts of "op:detail[backend]" strings; `print_summary` for the demo."""

    def __init__(self):
        self.counts: Counter[str] = Counter()

    def add(self, op: str, detail: str, tensor: torch.Tensor, kernel: str | None = None) -> None:
        self.counts[f"{op}:{detail}[{backend(kernel or op, tensor)}]" if detail else
                    f"{op}[{backend(kernel or op, tensor)}]"] += 1

    def clear(self) -> None:
        self.counts.clear()

    def has(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.counts)

    def summary(self) -> str:
        return "\n".join(f"  {key:<48} {n}" for key, n in sorted(self.counts.items()))


def rms_norm(x, weight, eps, *, out=None):
    return _impl("rms_norm", x)[0](x, weight, eps, out=out)


def fused_add_rms_norm(x, residual, weight, eps, *, out=None):
    return _impl("fused_add_rms_norm", x)[0](x, residual, weight, eps, out=out)


def silu_and_mul(x, *, out=None):
    return _impl("silu_and_mul", x)[0](x, out=out)


def write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout):
    return _impl("write_kv_cache", key)[0](key, value, key_cache, value_cache, slot_mapping, layout)


def paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, scale, layout, *,
                           max_seq_len=None, out=None):
    return _impl("paged_attention_decode", query)[0](query, key_cache, value_cache, block_tables, seq_lens, scale,
                                              layout, max_seq_len=max_seq_len, out=out)


def paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale,
                           layout, tiled_q4=False, *, max_seq_len=None, max_q_len=None, out=None):
    return _impl("paged_attention_varlen", query)[0](query, key_cache, value_cache, cu_seqlens_q, seq_lens,
                                              block_tables, scale, layout, tiled_q4, max_seq_len=max_seq_len,
                                              max_q_len=max_q_len, out=out)


def greedy_argmax(logits):
    return _impl("greedy_argmax", logits)[0](logits)


def moe_route(router_logits, top_k, renormalize):
    return _impl("moe_route", router_logits)[0](router_logits, top_k, renormalize)


def fused_moe(hidden, w13, w2, weights, ids, *, gemv_threshold=4, prefill_threshold=32, w13_interleaved=False):
    return _impl("fused_moe", hidden)[0](hidden, w13, w2, weights, ids, gemv_threshold=gemv_threshold,
                                         prefill_threshold=prefill_threshold, w13_interleaved=w13_interleaved)
