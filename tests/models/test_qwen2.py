"""Qwen2 (q/k/v biases, tied embeddings) against transformers, fp32 on CPU."""

import pytest

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_matches_transformers(hfx, tmp_path, tied):
    config = transformers.Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=256,
                                      tie_word_embeddings=tied, eos_token_id=None, bos_token_id=None)
    hf = hfx.save_hf(transformers.Qwen2ForCausalLM, config, tmp_path)
    hfx.check_against_hf(hf, tmp_path, hfx.prompts_of([17, 4, 9], 96))
