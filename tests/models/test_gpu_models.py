"""GPU, kernel path, bf16: ferrum_ext.models vs transformers on the same tiny random weights.

Logit error against transformers-fp32 must be at most 3x transformers-bf16's own error; greedy
tokens must agree with transformers-fp32 until the first step where its top two logits are within
tolerance (a tie that bf16 may break either way), after which the sequences are not compared.
Run: python -m pytest -q -m gpu tests/models/test_gpu_models.py
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import ferrum_ext.models as fm  # noqa: E402
from ferrum_ext.models import _kernels  # noqa: E402

pytestmark = pytest.mark.gpu
STEPS, TIE = 32, 0.05  # logits within TIE of each other count as a tie for bf16

COMMON = dict(vocab_size=256, hidden_size=256, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64, max_position_embeddings=512, eos_token_id=None,
              bos_token_id=None)
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM,
                  dict(moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2, norm_topk_prob=True)),
}


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bf16_kernel_path_matches_transformers(hfx, tmp_path, family):
    config_cls, model_cls, extra = FAMILIES[family]
    hf = hfx.save_hf(model_cls, config_cls(**COMMON, **extra), tmp_path).cuda()
    hf_bf16 = model_cls.from_pretrained(tmp_path, dtype=torch.bfloat16).cuda().eval()
    model = fm.from_pretrained(str(tmp_path), torch.bfloat16, "cuda")
    ids = torch.tensor(hfx.prompts_of([77], 256)[0], device="cuda")
    with torch.no_grad():
        ref = hf(ids[None]).logits[0].float()
        own = hf_bf16(ids[None]).logits[0].float()
    err, hf_err = _rel(model.logits(ids), ref), _rel(own, ref)
    assert err <= 3 * hf_err + 1e-3, (err, hf_err)

    prompts = hfx.prompts_of([5, 33, 17, 64, 9], 256, seed=7)
    outs = model.generate(prompts, STEPS)
    for prompt, got in zip(prompts, outs):
        seq = torch.tensor([prompt + got], device="cuda")
        with torch.no_grad():
            logits = hf(seq).logits[0, len(prompt) - 1:-1].float()  # fp32 logits before each new token
        for step, token in enumerate(got):
            top2 = logits[step].topk(2)
            want = top2.indices[0].item()
            if token != want:
                gap = (top2.values[0] - logits[step, token]).item()
                assert gap <= TIE * logits[step].abs().max().item(), (prompt, step, token, want, gap)
                break  # diverged at a near-tie: the rest is a different continuation

    # Every op that ferrum_ext.ops provides ran its CUDA kernel.
    for key in model.log.counts:
        if "[" in key and "flash_attn" not in key:
            op = {"attention": None, "moe": "fused_moe", "sample": None}.get(key.split(":")[0])
            if op and hasattr(_kernels._ops, op):
                assert key.endswith("[cuda]"), key
