"""BERT encoder (BertModel names): last hidden state and mean-pooled sentence embeddings.

Bidirectional attention over a padded batch (the attention mask hides padding
keys); no paged cache. Checkpoint keys may carry a "bert." prefix (BertFor*).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ferrum_ext.models.layers import Linear, param
from ferrum_ext.models.llama import Embedding

_ACTS = {"gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
         "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


class LayerNorm(nn.Module):
    def __init__(self, dim, eps, dtype, device):
        super().__init__()
        self.eps = eps
        self.weight = param(dim, dtype=dtype, device=device)
        self.bias = param(dim, dtype=dtype, device=device)

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class _Dense(nn.Module):
    """`dense` + optional `LayerNorm`, as BertSelfOutput / BertIntermediate / BertOutput."""

    def __init__(self, n_in, n_out, eps, norm, dtype, device):
        super().__init__()
        self.dense = Linear(n_in, n_out, True, dtype, device)
        if norm:
            self.LayerNorm = LayerNorm(n_out, eps, dtype, device)


class _SelfAttention(nn.Module):
    def __init__(self, h, dtype, device):
        super().__init__()
        self.query, self.key, self.value = (Linear(h, h, True, dtype, device) for _ in range(3))


class _Attention(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.self = _SelfAttention(cfg.hidden_size, dtype, device)
        self.output = _Dense(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps, True, dtype, device)


class _Layer(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.act = _ACTS.get(cfg.hidden_act)
        if self.act is None:
            raise ValueError(f"BERT hidden_act {cfg.hidden_act!r} is not supported")
        self.attention = _Attention(cfg, dtype, device)
        self.intermediate = _Dense(cfg.hidden_size, cfg.intermediate_size, 0, False, dtype, device)
        self.output = _Dense(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps, True, dtype, device)

    def forward(self, x, mask):
        b, t, h = x.shape
        sa = self.attention.self

        def split(y):
            return y.view(b, t, self.heads, h // self.heads).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(sa.query(x)), split(sa.key(x)), split(sa.value(x)), attn_mask=mask)
        o = o.transpose(1, 2).reshape(b, t, h)
        ao = self.attention.output
        x = ao.LayerNorm(ao.dense(o) + x)
        y = self.output.dense(self.act(self.intermediate.dense(x)))
        return self.output.LayerNorm(y + x)


class _Embeddings(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size, dtype, device)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size, dtype, device)
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, cfg.hidden_size, dtype, device)
        self.LayerNorm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, dtype, device)


class _Encoder(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg, dtype, device) for _ in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    def __init__(self, cfg, dtype, device):
        super().__init__()
        self.config, self.dtype, self.device = cfg, dtype, torch.device(device)
        self.embeddings = _Embeddings(cfg, dtype, device)
        self.encoder = _Encoder(cfg, dtype, device)

    @torch.inference_mode()
    def last_hidden_state(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """[B, T, hidden] in the model dtype."""
        input_ids = torch.as_tensor(input_ids, device=self.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [B, T], got shape {tuple(input_ids.shape)}")
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {t} tokens exceeds max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = torch.as_tensor(attention_mask, device=self.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        emb = self.embeddings
        x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
        x = emb.LayerNorm(x + emb.position_embeddings(torch.arange(t, device=self.device))[None])
        mask = attention_mask.bool()[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x

    def encode(self, input_ids, attention_mask=None, normalize: bool = False) -> torch.Tensor:
        """Mean over the tokens the attention mask keeps: [B, hidden] fp32 (L2-normalised on request)."""
        hidden = self.last_hidden_state(input_ids, attention_mask).float()
        if attention_mask is None:
            mask = torch.ones(hidden.shape[:2], device=hidden.device)
        else:
            mask = torch.as_tensor(attention_mask, device=hidden.device).float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if normalize else pooled
