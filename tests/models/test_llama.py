"""LLaMA 2/3 (plain, llama3 and linear rope scaling, tied embeddings) against transformers, fp32 on CPU."""

import pytest

transformers = pytest.importorskip("transformers")

BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, eos_token_id=None, bos_token_id=None)


@pytest.mark.parametrize("extra", [
    {},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, "rope_theta": 500000.0},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}, "tie_word_embeddings": True},
], ids=["plain", "llama3_rope", "linear_rope_tied"])
def test_llama_matches_transformers(hfx, tmp_path, extra):
    config = transformers.LlamaConfig(**{**BASE, **extra})
    hf = hfx.save_hf(transformers.LlamaForCausalLM, config, tmp_path)
    hfx.check_against_hf(hf, tmp_path, hfx.prompts_of([23, 5, 12], BASE["vocab_size"]))
