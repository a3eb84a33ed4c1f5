"""The ops the models call, and a log of which path each call took.

Each function calls `ferrum_ext.ops.<name>` when that op exists (the CUDA
kernel on GPU tensors with the extension built, its reference twin otherwise),
else the TEMPORARY twin in `_reference_ops` (delete once ferrum_ext.ops has
every op). `PathLog` counts "op:detail" strings so tests and the demo can see
which kernel ran; the model decides the detail (layout, tier, varlen, ...).
"""

from __future__ import annotations

from collections import Counter

import torch

from ferrum_ext import ops as _ops
from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.models import _reference_ops


def _impl(name: str):
    fn = getattr(_ops, name, None)
    return (fn, "ops") if fn is not None else (getattr(_reference_ops, name), "fallback")


def backend(name: str, tensor: torch.Tensor) -> str:
    """'cuda' when the compiled kernel runs, 'reference' when a PyTorch twin does."""
    fn, source = _impl(name)
    if source == "ops" and tensor.is_cuda and cuda_ops_available():
        return "cuda"
    return "reference"


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
    return _impl("rms_norm")[0](x, weight, eps, out=out)


def fused_add_rms_norm(x, residual, weight, eps, *, out=None):
    return _impl("fused_add_rms_norm")[0](x, residual, weight, eps, out=out)


def silu_and_mul(x, *, out=None):
    return _impl("silu_and_mul")[0](x, out=out)


def write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout):
    return _impl("write_kv_cache")[0](key, value, key_cache, value_cache, slot_mapping, layout)


def paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, scale, layout, *,
                           max_seq_len=None, out=None):
    return _impl("paged_attention_decode")[0](query, key_cache, value_cache, block_tables, seq_lens, scale,
                                              layout, max_seq_len=max_seq_len, out=out)


def paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale,
                           layout, tiled_q4=False, *, max_seq_len=None, max_q_len=None, out=None):
    return _impl("paged_attention_varlen")[0](query, key_cache, value_cache, cu_seqlens_q, seq_lens,
                                              block_tables, scale, layout, tiled_q4, max_seq_len=max_seq_len,
                                              max_q_len=max_q_len, out=out)


def greedy_argmax(logits):
    return _impl("greedy_argmax")[0](logits)


def moe_route(router_logits, top_k, renormalize):
    return _impl("moe_route")[0](router_logits, top_k, renormalize)


def fused_moe(hidden, w13, w2, weights, ids, *, gemv_threshold=4, prefill_threshold=32):
    return _impl("fused_moe")[0](hidden, w13, w2, weights, ids, gemv_threshold=gemv_threshold,
                                 prefill_threshold=prefill_threshold)
