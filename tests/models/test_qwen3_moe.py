"""Qwen3-MoE (sparse steps, mlp_only_layers, norm_topk_prob) against transformers, fp32 on CPU."""

import pytest

transformers = pytest.importorskip("transformers")

from ferrum_ext.models.config import load_config  # noqa: E402


def moe_config(**kw):
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=80, moe_intermediate_size=24,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                num_experts=6, num_experts_per_tok=2, max_position_embeddings=256, eos_token_id=None,
                bos_token_id=None)
    return transformers.Qwen3MoeConfig(**{**base, **kw})


@pytest.mark.parametrize("extra", [
    {"norm_topk_prob": True},
    {"norm_topk_prob": False, "decoder_sparse_step": 2, "mlp_only_layers": [2]},
], ids=["all_sparse_norm_topk", "sparse_step2_mlp_only"])
def test_qwen3_moe_matches_transformers(hfx, tmp_path, extra):
    hf = hfx.save_hf(transformers.Qwen3MoeForCausalLM, moe_config(**extra), tmp_path)
    cfg = load_config(str(tmp_path))
    layers = [cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)]
    hf_layers = [type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock" for layer in hf.model.layers]
    assert layers == hf_layers
    hfx.check_against_hf(hf, tmp_path, hfx.prompts_of([21, 6, 13], 96))
