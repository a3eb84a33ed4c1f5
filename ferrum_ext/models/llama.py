"""LLaMA 2/3, Qwen2 and Qwen3 decoders (one class: biases and q/k norms follow the config).

Parameter names mirror Hugging Face (`model.layers.N.self_attn...`); q/k/v and
gate/up are fused on load. Qwen3-MoE reuses these modules with a sparse MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferrum_ext.models.layers import MLP, Attention, Linear, RMSNorm, Rotary, get_context, param


class Embedding(nn.Module):
    def __init__(self, num, dim, dtype, device):
        super().__init__()
        self.weight = param(num, dim, dtype=dtype, device=device)

    def forward(self, ids):
        return F.embedding(ids, self.weight)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, idx, rotary, dtype, device, mlp: nn.Module | None = None):
        super().__init__()
        self.idx = idx
        self.self_attn = Attention(cfg, idx, rotary, dtype, device)
        self.mlp = mlp if mlp is not None else MLP(cfg.hidden_size, cfg.intermediate_size, dtype, device)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)

    def forward(self, x, residual):
        ctx = get_context()
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h = self.input_layernorm(x, residual)  # residual += x, in place
        with ctx.timed(f"L{self.idx}.attn", ctx.profile_ops, x.device):
            h = self.self_attn(h)
        h = self.post_attention_layernorm(h, residual)
        with ctx.timed(f"L{self.idx}.mlp", ctx.profile_ops, x.device):
            h = self.mlp(h)
        return h, residual


class DecoderModel(nn.Module):
    def __init__(self, cfg, dtype, device, make_mlp=None, max_positions: int = 2048):
        super().__init__()
        rotary = Rotary(cfg.inv_freq(), max_positions, device)
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, rotary, dtype, device, make_mlp(i) if make_mlp else None)
            for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype, device)

    def forward(self, input_ids):
        x, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            x, residual = layer(x, residual)
        return self.norm(x, residual)


class LlamaForCausalLM(nn.Module):
    """Also Qwen2ForCausalLM and Qwen3ForCausalLM."""

    def __init__(self, cfg, dtype, device, max_positions: int = 2048, make_mlp=None):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg, dtype, device, make_mlp, max_positions)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, False, dtype, device)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [M, hidden] of the packed tokens of the current step."""
        return self.model(input_ids)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
