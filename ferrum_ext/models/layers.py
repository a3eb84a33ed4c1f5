"""Building blocks of the decoder models: linear weights with HF names, RMSNorm,
RoPE, paged attention, gated MLP, and the per-step context they read.

As in nano-vllm, the attention metadata of a step lives in a `StepContext`
set by the engine (`set_context`) instead of being threaded through forward().
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ferrum_ext.models import _kernels as K
from ferrum_ext.models.loader import set_sources


def param(*shape, dtype, device) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device), requires_grad=False)


class Profiler:
    """Named time sections (CUDA events on GPU), printed to stderr by the engine."""

    def __init__(self):
        self.times: dict[str, float] = {}

    @contextmanager
    def section(self, name: str, device: torch.device):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            yield
            ms = (time.perf_counter() - t0) * 1e3
        self.times[name] = self.times.get(name, 0.0) + ms


@dataclass
class StepContext:
    """Metadata of one forward step over M packed tokens of B sequences."""

    mode: str  # "decode" (one token per sequence), "varlen" (any q_len), "fa2"
    positions: torch.Tensor  # int64 [M]
    slot_mapping: torch.Tensor  # int64 [M]
    cu_seqlens_q: torch.Tensor  # int32 [B + 1]
    seq_lens: torch.Tensor  # int32 [B], context length including this step
    block_tables: torch.Tensor  # int32 [B, W]
    max_seq_len: int
    max_q_len: int
    cache: object  # ferrum_ext.kv_cache.KVCache
    env: object  # Qwen3MoeRuntimeEnv
    log: K.PathLog
    kind: str = "prefill"  # prefill | decode | mixed: for logs
    tiled_q4: bool = False
    read_shadow: bool = False  # read the "nhd" shadow pool
    profile_ops: bool = False  # decode_op_profile / unified layer profile
    profile_moe: bool = False
    prof: Profiler = field(default_factory=Profiler)

    @contextmanager
    def timed(self, name: str, enabled: bool, device):
        if enabled:
            with self.prof.section(name, device):
                yield
        else:
            yield


_CONTEXT: StepContext | None = None


def set_context(ctx: StepContext | None) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def get_context() -> StepContext:
    if _CONTEXT is None:
        raise RuntimeError("model forward called outside an engine step")
    return _CONTEXT


class Linear(nn.Module):
    def __init__(self, in_features, out_features, bias, dtype, device):
        super().__init__()
        self.weight = param(out_features, in_features, dtype=dtype, device=device)
        self.bias = param(out_features, dtype=dtype, device=device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class MergedLinear(Linear):
    """Several HF linears stacked on the output dim: (name, rows) each, e.g. q/k/v or gate/up."""

    def __init__(self, in_features, parts: list[tuple[str, int]], bias, dtype, device):
        super().__init__(in_features, sum(n for _, n in parts), bias, dtype, device)
        for attr in ("weight", "bias"):
            p = getattr(self, attr)
            if p is not None:
                offs = [sum(n for _, n in parts[:i]) for i in range(len(parts))]
                set_sources(p, [(f"{name}.{attr}", (slice(o, o + n),)) for (name, n), o in zip(parts, offs)])


class RMSNorm(nn.Module):
    def __init__(self, dim, eps, dtype, device):
        super().__init__()
        self.eps = eps
        self.weight = param(dim, dtype=dtype, device=device)

    def forward(self, x, residual=None):
        if residual is None:
            return K.rms_norm(x, self.weight, self.eps)
        return K.fused_add_rms_norm(x, residual, self.weight, self.eps)


class Rotary:
    """Half-split RoPE (rotate_half), cos/sin in fp32 rounded to the activation dtype like HF."""

    def __init__(self, inv_freq: torch.Tensor, max_positions: int, device):
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos, self.sin = emb.cos().to(device), emb.sin().to(device)

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos = self.cos[positions].to(x.dtype)[:, None, :]
        sin = self.sin[positions].to(x.dtype)[:, None, :]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg, layer_idx, rotary, dtype, device):
        super().__init__()
        self.layer_idx, self.rotary = layer_idx, rotary
        self.heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_size, self.kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.scale = self.head_dim ** -0.5
        parts = [("q_proj", self.q_size), ("k_proj", self.kv_size), ("v_proj", self.kv_size)]
        self.qkv_proj = MergedLinear(cfg.hidden_size, parts, cfg.qkv_bias, dtype, device)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, cfg.o_bias, dtype, device)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype, device)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, dtype, device)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x):
        ctx = get_context()
        m = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(m, self.heads, self.head_dim)
        k = k.reshape(m, self.kv_heads, self.head_dim)
        v = v.reshape(m, self.kv_heads, self.head_dim).contiguous()
        if self.q_norm is not None:
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q = self.rotary(q, ctx.positions).contiguous()
        k = self.rotary(k, ctx.positions).contiguous()
        cache, i = ctx.cache, self.layer_idx
        K.write_kv_cache(k, v, cache.key_caches[i], cache.value_caches[i], ctx.slot_mapping, cache.layout)
        if cache.shadow is not None:
            K.write_kv_cache(k, v, cache.shadow[0][i], cache.shadow[1][i], ctx.slot_mapping, "nhd")
        o = self._attend(q, ctx)
        return self.o_proj(o.reshape(m, self.q_size))

    def _attend(self, q, ctx: StepContext):
        cache, i = ctx.cache, self.layer_idx
        if ctx.read_shadow or ctx.mode == "fa2":
            layout = "nhd"
            kc, vc = (cache.shadow[0][i], cache.shadow[1][i]) if cache.shadow else (
                cache.key_caches[i], cache.value_caches[i])
        else:
            layout, kc, vc = cache.layout, cache.key_caches[i], cache.value_caches[i]
        if ctx.mode == "fa2":
            if i == 0:
                ctx.log.add("attention", f"{ctx.kind}:flash_attn2[nhd]", q, kernel="flash_attn")
            from flash_attn import flash_attn_varlen_func
            cu_k = torch.zeros_like(ctx.cu_seqlens_q)
            cu_k[1:] = torch.cumsum(ctx.seq_lens, 0)
            return flash_attn_varlen_func(q, kc, vc, ctx.cu_seqlens_q, cu_k, ctx.max_q_len, ctx.max_seq_len,
                                          softmax_scale=self.scale, causal=True, block_table=ctx.block_tables)
        if ctx.mode == "decode":
            if i == 0:
                ctx.log.add("attention", f"{ctx.kind}:paged_decode[{layout}]", q, kernel="paged_attention_decode")
            return K.paged_attention_decode(q, kc, vc, ctx.block_tables, ctx.seq_lens, self.scale, layout,
                                            max_seq_len=ctx.max_seq_len)
        if i == 0:
            kind = "varlen_tiled_q4" if ctx.tiled_q4 else "varlen"
            ctx.log.add("attention", f"{ctx.kind}:{kind}[{layout}]", q, kernel="paged_attention_varlen")
        return K.paged_attention_varlen(q, kc, vc, ctx.cu_seqlens_q, ctx.seq_lens, ctx.block_tables,
                                        self.scale, layout, ctx.tiled_q4, max_seq_len=ctx.max_seq_len,
                                        max_q_len=ctx.max_q_len)


class MLP(nn.Module):
    def __init__(self, hidden, inter, dtype, device):
        super().__init__()
        self.gate_up_proj = MergedLinear(hidden, [("gate_proj", inter), ("up_proj", inter)], False, dtype, device)
        self.down_proj = Linear(inter, hidden, False, dtype, device)

    def forward(self, x):
        return self.down_proj(K.silu_and_mul(self.gate_up_proj(x)))
