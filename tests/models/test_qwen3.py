"""Qwen3 (q/k norms, explicit head_dim != hidden/heads) against transformers, fp32 on CPU."""

import pytest

transformers = pytest.importorskip("transformers")


def test_qwen3_matches_transformers(hfx, tmp_path):
    config = transformers.Qwen3Config(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=256, rope_theta=1e6, eos_token_id=None,
                                      bos_token_id=None)
    hf = hfx.save_hf(transformers.Qwen3ForCausalLM, config, tmp_path)
    hfx.check_against_hf(hf, tmp_path, hfx.prompts_of([19, 7, 2, 11], 96))
