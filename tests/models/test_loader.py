"""Loader and config errors, sharded checkpoints, legacy config spellings, bad prompts."""


import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

import ferrum_ext.models as fm  # noqa: E402
from ferrum_ext.kv_cache import KVCacheExhausted  # noqa: E402
from ferrum_ext.models.config import parse_config  # noqa: E402
from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv  # noqa: E402

VOCAB = 64


@pytest.fixture
def qwen3(hfx, tmp_path):
    config = transformers.Qwen3Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                      max_position_embeddings=64, eos_token_id=None)
    hfx.save_hf(transformers.Qwen3ForCausalLM, config, tmp_path)
    return tmp_path


def _edit_weights(path, fn):
    file = path / "model.safetensors"
    tensors = load_file(file)
    fn(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_missing_tensor_names_key_and_shape(qwen3):
    _edit_weights(qwen3, lambda t: t.pop("model.layers.0.self_attn.k_proj.weight"))
    with pytest.raises(fm.LoaderError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(16, 32\)"):
        fm.from_pretrained(str(qwen3), torch.float32, "cpu")


def test_misshaped_tensor_names_key_and_shape(qwen3):
    def shrink(t):
        t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:40]
    _edit_weights(qwen3, shrink)
    with pytest.raises(fm.LoaderError, match=r"up_proj\.weight.*\(40, 32\), expected shape \(48, 32\)"):
        fm.from_pretrained(str(qwen3), torch.float32, "cpu")


def test_sharded_checkpoint_matches_single(hfx, tmp_path):
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=64)
    hfx.save_hf(transformers.LlamaForCausalLM, config, tmp_path / "one")
    hfx.save_hf(transformers.LlamaForCausalLM, config, tmp_path / "many", max_shard_size="20KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    ids = list(range(9))
    one = fm.from_pretrained(str(tmp_path / "one"), torch.float32, "cpu").logits(ids)
    many = fm.from_pretrained(str(tmp_path / "many"), torch.float32, "cpu").logits(ids)
    assert torch.equal(one, many)


def _raw(**kw):
    return {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 8, **kw}


def test_config_errors_and_spellings():
    with pytest.raises(fm.ModelConfigError, match="unsupported architecture 'GPT2LMHeadModel'"):
        parse_config(_raw(architectures=["GPT2LMHeadModel"]))
    with pytest.raises(fm.ModelConfigError, match="rope_scaling type 'yarn' is not supported"):
        parse_config(_raw(rope_scaling={"rope_type": "yarn", "factor": 4.0}))
    with pytest.raises(fm.ModelConfigError, match="needs 'low_freq_factor'"):
        parse_config(_raw(rope_scaling={"rope_type": "llama3", "factor": 8.0}))
    legacy = parse_config(_raw(rope_theta=5e5, rope_scaling={"type": "linear", "factor": 2.0}))
    new = parse_config(_raw(rope_parameters={"rope_theta": 5e5, "rope_type": "linear", "factor": 2.0}))
    assert torch.equal(legacy.inv_freq(), new.inv_freq())
    assert legacy.rope_theta == 5e5 and legacy.head_dim == 4
    moe = dict(architectures=["Qwen3MoeForCausalLM"], num_experts_per_tok=2, moe_intermediate_size=4)
    assert parse_config(_raw(num_experts=8, **moe)).num_experts == 8
    assert parse_config(_raw(num_local_experts=6, **moe)).num_experts == 6


def test_bad_prompts_and_kv_exhaustion(qwen3):
    model = fm.from_pretrained(str(qwen3), torch.float32, "cpu")  # capacity = min(64, 512)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        model.generate([[1, 2], []], 4)
    with pytest.raises(ValueError, match="exceeds the KV capacity of 64"):
        model.generate([[1] * 60], 8)
    with pytest.raises(ValueError, match="outside"):
        model.generate([[VOCAB]], 2)
    with pytest.raises(ValueError, match="one non-empty prompt"):
        model.logits([])
    small = fm.from_pretrained(str(qwen3), torch.float32, "cpu", max_blocks=2)  # 32 tokens in all
    with pytest.raises(KVCacheExhausted, match="prompt 0 needs 3 KV blocks"):
        small.generate([[1] * 40], 2)
    assert small.cache.allocator.num_free == 2 and not small.cache.seqs
    # Prompts that fit one at a time are admitted as others finish.
    outs = small.generate([[1] * 20, [2] * 20, [3] * 20], 3)
    assert [len(o) for o in outs] == [3, 3, 3] and small.cache.allocator.num_free == 2


def test_fa2_without_flash_attn_is_a_clear_error(qwen3):
    try:
        import flash_attn  # noqa: F401
        pytest.skip("flash_attn is installed")
    except ImportError:
        pass
    env = Qwen3MoeRuntimeEnv.from_env_vars({"FERRUM_FA2_SOURCE": "1"})
    with pytest.raises(RuntimeError, match="flash_attn"):
        fm.from_pretrained(str(qwen3), torch.float32, "cpu", env=env)
