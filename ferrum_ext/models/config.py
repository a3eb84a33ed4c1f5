"""config.json -> ModelConfig: the few fields the model classes read.

Accepts both spellings Hugging Face has used: `rope_theta` + `rope_scaling`
(checkpoints on the Hub) and `rope_parameters` (transformers >= 5), and
`num_experts` / `num_local_experts` for Qwen3-MoE.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch

# architecture name in config.json -> family handled by ferrum_ext.models
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "BertModel": "bert",
    "BertForMaskedLM": "bert",
    "BertForPreTraining": "bert",
}
MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
               "qwen3_moe": "Qwen3MoeForCausalLM", "bert": "BertModel"}
SUPPORTED_ROPE = ("default", "llama3", "linear")


class ModelConfigError(ValueError):
    """config.json names an architecture or option ferrum_ext.models does not support."""


@dataclass
class ModelConfig:
    architecture: str
    family: str
    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    num_key_value_heads: int = 0
    head_dim: int = 0
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    eos_token_id: list[int] = field(default_factory=list)
    # Qwen3-MoE
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    # BERT
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    hidden_act: str = "silu"
    raw: dict = field(default_factory=dict, repr=False)

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Hugging Face's rule for a sparse (MoE) decoder layer."""
        return (layer_idx not in self.mlp_only_layers and self.num_experts > 0
                and (layer_idx + 1) % self.decoder_sparse_step == 0)

    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies [head_dim // 2] in fp32, after rope_scaling."""
        d = self.head_dim
        inv = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
        s = self.rope_scaling or {}
        kind = s.get("rope_type", s.get("type", "default"))
        if kind == "linear":
            return inv / float(s["factor"])
        if kind == "llama3":
            factor, lo, hi = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
            old = float(s["original_max_position_embeddings"])
            wavelen = 2 * math.pi / inv
            out = torch.where(wavelen > old / lo, inv / factor, inv)
            smooth = (old / wavelen - lo) / (hi - lo)
            smoothed = (1 - smooth) * out / factor + smooth * out
            medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
            return torch.where(medium, smoothed, out)
        return inv


def _rope(raw: dict) -> tuple[float, dict | None]:
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        theta, scaling = params["rope_theta"], dict(params)
    else:
        theta, scaling = raw.get("rope_theta", 10000.0), raw.get("rope_scaling")
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in SUPPORTED_ROPE:
            raise ModelConfigError(
                f"rope_scaling type {kind!r} is not supported (supported: {', '.join(SUPPORTED_ROPE)})")
        need = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                                    "original_max_position_embeddings")}.get(kind, ())
        for key in need:
            if key not in scaling:
                raise ModelConfigError(f"rope_scaling of type {kind!r} needs {key!r}")
        if kind == "default":
            scaling = None
    return float(theta), scaling


def parse_config(raw: dict) -> ModelConfig:
    archs = raw.get("architectures") or [MODEL_TYPES.get(raw.get("model_type", ""), "")]
    arch = archs[0]
    if arch not in ARCHITECTURES:
        raise ModelConfigError(
            f"unsupported architecture {arch!r} (model_type {raw.get('model_type')!r}); supported: "
            f"{', '.join(sorted(ARCHITECTURES))}")
    family = ARCHITECTURES[arch]
    heads = raw["num_attention_heads"]
    eos = raw.get("eos_token_id")
    cfg = ModelConfig(
        architecture=arch, family=family, model_type=raw.get("model_type", ""),
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=heads,
        intermediate_size=raw.get("intermediate_size", 0),
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", family == "bert")),
        # Qwen2 always has q/k/v biases and no o_proj bias; LLaMA/Qwen3 follow attention_bias.
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(raw.get("attention_bias", False)),
        o_bias=arch != "Qwen2ForCausalLM" and bool(raw.get("attention_bias", False)),
        qk_norm=arch in ("Qwen3ForCausalLM", "Qwen3MoeForCausalLM"),
        eos_token_id=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
        num_experts=raw.get("num_experts", raw.get("num_local_experts", 0)) or 0,
        num_experts_per_tok=raw.get("num_experts_per_tok", 0),
        moe_intermediate_size=raw.get("moe_intermediate_size", 0),
        norm_topk_prob=bool(raw.get("norm_topk_prob", False)),
        decoder_sparse_step=raw.get("decoder_sparse_step", 1) or 1,
        mlp_only_layers=list(raw.get("mlp_only_layers") or []),
        layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
        type_vocab_size=raw.get("type_vocab_size", 2),
        hidden_act=raw.get("hidden_act", "silu"), raw=raw)
    if family != "bert":
        cfg.rope_theta, cfg.rope_scaling = _rope(raw)
        if cfg.hidden_act != "silu":
            raise ModelConfigError(f"hidden_act {cfg.hidden_act!r} is not supported (only 'silu')")
        if raw.get("mlp_bias"):
            raise ModelConfigError("mlp_bias=true is not supported")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            raise ModelConfigError("num_attention_heads must be a multiple of num_key_value_heads")
    elif raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelConfigError("BERT position_embedding_type must be 'absolute'")
    if family == "qwen3_moe" and (cfg.num_experts <= 0 or cfg.num_experts_per_tok <= 0):
        raise ModelConfigError("Qwen3-MoE config needs num_experts > 0 and num_experts_per_tok > 0")
    return cfg


def load_config(path: str) -> ModelConfig:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no config.json in {path!r}")
    with open(file) as f:
        return parse_config(json.load(f))
