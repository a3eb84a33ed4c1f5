"""Qwen3-MoE: the Qwen3 decoder with a sparse MLP where `decoder_sparse_step` /
`mlp_only_layers` say so (Hugging Face's rule, ModelConfig.is_moe_layer).

Experts are stacked on load: w13 [E, 2I, H] = [gate; up], w2 [E, H, I], from
the per-expert checkpoint keys `mlp.experts.N.{gate,up,down}_proj.weight`; after
loading, w13's gate and up rows are interleaved by 8 (ops.interleave_gate_up), the
layout in which the Hopper prefill tier fuses SiLU·mul into its gate_up GEMM.
Dispatch (DESIGN.md section 3): FERRUM_MOE_BUCKETED picks the bucketed fused
kernel (tier by token count and the env thresholds) or the per-(token,
expert) loop of small GEMMs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferrum_ext.models import _kernels as K
from ferrum_ext.models.layers import MLP, Linear, get_context, param
from ferrum_ext.models.llama import LlamaForCausalLM
from ferrum_ext.models.loader import set_sources
from ferrum_ext.ops.moe import interleave_gate_up
from ferrum_ext.reference import deinterleave_gate_up


class Experts(nn.Module):
    def __init__(self, num_experts, hidden, inter, dtype, device):
        super().__init__()
        self.w13 = param(num_experts, 2 * inter, hidden, dtype=dtype, device=device)
        self.w2 = param(num_experts, hidden, inter, dtype=dtype, device=device)
        gate_up = []
        for e in range(num_experts):
            gate_up += [(f"experts.{e}.gate_proj.weight", (e, slice(0, inter))),
                        (f"experts.{e}.up_proj.weight", (e, slice(inter, 2 * inter)))]
        set_sources(self.w13, gate_up)
        set_sources(self.w2, [(f"experts.{e}.down_proj.weight", (e,)) for e in range(num_experts)])
        self.w13_interleaved = False

    def after_load(self):
        """Repacks w13 into the gate/up-interleaved layout, once."""
        if not self.w13_interleaved:
            self.w13.data = interleave_gate_up(self.w13.data)
            self.w13_interleaved = True

    def gate_up_weights(self, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert e's gate and up weights [I, H], in either w13 layout."""
        w = self.w13[e]
        if self.w13_interleaved:
            w = deinterleave_gate_up(w.unsqueeze(0))[0]
        inter = w.shape[0] // 2
        return w[:inter], w[inter:]


def moe_tier(num_tokens: int, env) -> tuple[str, int, int]:
    """(tier name, gemv_threshold, prefill_threshold) for a step of `num_tokens` tokens."""
    gemv = env.moe_batch_threshold
    # With the batched-decode tier off, the small-M range is empty: those T go to the prefill tier.
    prefill = max(env.moe_prefill_threshold, gemv) if env.moe_batched_decode_enabled else gemv
    tier = "gemv" if num_tokens < gemv else "small_m" if num_tokens < prefill else "prefill"
    return tier, gemv, prefill


class SparseMoeBlock(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.top_k, self.renormalize = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.log_path = False  # the first MoE layer records the path taken
        self.gate = Linear(cfg.hidden_size, cfg.num_experts, False, dtype, device)
        self.experts = Experts(cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, dtype, device)

    def forward(self, x):
        ctx = get_context()
        first = self.log_path
        with ctx.timed("moe.route", ctx.profile_moe, x.device):
            weights, ids = K.moe_route(self.gate(x), self.top_k, self.renormalize)
        with ctx.timed("moe.experts", ctx.profile_moe, x.device):
            if not ctx.env.moe_bucketed:
                if first:
                    ctx.log.add("moe", f"{ctx.kind}:per_pair", x, kernel="moe_route")
                return self._per_pair(x, weights, ids)
            tier, gemv, prefill = moe_tier(x.shape[0], ctx.env)
            if first:
                ctx.log.add("moe", f"{ctx.kind}:bucketed_{tier}", x, kernel="fused_moe")
            return K.fused_moe(x, self.experts.w13, self.experts.w2, weights, ids, gemv_threshold=gemv,
                               prefill_threshold=prefill, w13_interleaved=self.experts.w13_interleaved)

    def _per_pair(self, x, weights, ids):
        """The slow baseline: one gate_up GEMV + one down GEMV per (token, expert) pair."""
        out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for t, row in enumerate(ids.tolist()):
            for j, e in enumerate(row):
                gate, up = self.experts.gate_up_weights(e)
                act = F.silu(F.linear(x[t:t + 1], gate)) * F.linear(x[t:t + 1], up)
                out[t] += (F.linear(act, self.experts.w2[e]) * weights[t, j].to(x.dtype))[0].float()
        return out.to(x.dtype)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg, dtype, device, max_positions: int = 2048):
        def make_mlp(i):
            if cfg.is_moe_layer(i):
                return SparseMoeBlock(cfg, dtype, device)
            return MLP(cfg.hidden_size, cfg.intermediate_size, dtype, device)

        super().__init__(cfg, dtype, device, max_positions, make_mlp)
        first = next((m for m in self.modules() if isinstance(m, SparseMoeBlock)), None)
        if first is not None:
            first.log_path = True
