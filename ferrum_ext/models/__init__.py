"""Hugging Face checkpoints run through ferrum_ext's ops.

    model = ferrum_ext.models.from_pretrained("path/to/Qwen3-30B-A3B", dtype=torch.bfloat16)
    model.generate([[1, 2, 3]], max_new_tokens=32)

Families: LLaMA 2/3, Qwen2, Qwen3 (`llama.py`), Qwen3-MoE (`qwen3_moe.py`),
BERT (`bert.py`); the architecture comes from config.json. Kernels are chosen
by the FERRUM_* runtime env (`ferrum_ext.runtime_env`, DESIGN.md section 3);
on CPU or without the built extension every op runs its PyTorch reference.
"""

from __future__ import annotations

import torch

from ferrum_ext.models.config import ModelConfig, ModelConfigError, load_config
from ferrum_ext.models.loader import LoaderError, load_weights

__all__ = ["LoaderError", "ModelConfig", "ModelConfigError", "from_pretrained", "load_config"]


def from_pretrained(path: str, dtype: torch.dtype = torch.bfloat16, device="cuda", *, env=None,
                    block_size: int = 16, max_blocks: int | None = None):
    """Loads the checkpoint directory `path` (config.json + *.safetensors).

    Causal LMs come back as a `CausalLM` (logits / generate), BERT as a
    `BertModel` (encode / last_hidden_state). `env` defaults to
    `Qwen3MoeRuntimeEnv.from_env()`; `max_blocks` overrides FERRUM_KV_MAX_BLOCKS.
    """
    cfg = load_config(path)
    if cfg.family == "bert":
        from ferrum_ext.models.bert import BertModel
        model = BertModel(cfg, dtype, device)
        load_weights(model, path, strip_prefixes=("bert.",))
        return model
    from ferrum_ext.models.engine import CausalLM
    from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv
    env = Qwen3MoeRuntimeEnv.from_env() if env is None else env
    max_positions = env.kv_capacity(cfg.max_position_embeddings)
    if cfg.family == "qwen3_moe":
        from ferrum_ext.models.qwen3_moe import Qwen3MoeForCausalLM
        net = Qwen3MoeForCausalLM(cfg, dtype, device, max_positions)
    else:
        from ferrum_ext.models.llama import LlamaForCausalLM
        net = LlamaForCausalLM(cfg, dtype, device, max_positions)
    optional = ("lm_head.weight",) if cfg.tie_word_embeddings else ()
    load_weights(net, path, optional=optional)
    return CausalLM(net, cfg, env, dtype=dtype, device=device, block_size=block_size, max_blocks=max_blocks)
