"""GPU, kernel path, bf16: ferrum_ext.models vs transformers on the same tiny random weights.

Logit error against transformers-fp32 must be at most 3x transformers-bf16's own error; greedy
tokens must agree with transformers-fp32 until the first step where its top two logits are within
tolerance (a tie that bf16 may break either way), after which the sequences are not compared.
CUDA-graph decode (FERRUM_MOE_GRAPH=1 + FERRUM_VLLM_MOE=1): the same greedy tokens as the eager
kernel path, with graphs captured once per batch size and replayed as seq_lens / block tables change.
Run: python -m pytest -q -m gpu tests/models/test_gpu_models.py
"""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import ferrum_ext  # noqa: E402
import ferrum_ext.models as fm  # noqa: E402
from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv  # noqa: E402

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

    # Every logged op ran its CUDA kernel (the host argmax of logits is torch's, by design).
    for key in model.log.counts:
        if "[" in key and "logits_to_host" not in key:
            assert key.endswith("[cuda]"), (key, model.log.summary())


# Up to 4 sequences at a time, 7 prompts, chunked prefill: decode batches of 4, 3 and 2 (threshold 2 batches
# them) with sequences admitted and finishing at different steps. Capacity 256 keeps the attention split-K
# plan at one split for both paths (it depends on max_seq_len: the graph uses the capacity, eager the
# step's max), so the two paths run the same kernels on the same shapes and must agree bit for bit.
GRAPH_BASE = {"FERRUM_VLLM_MOE": "1", "FERRUM_PAGED_MAX_SEQS": "4", "FERRUM_MOE_BATCH_THRESHOLD": "2",
              "FERRUM_KV_CAPACITY": "256", "FERRUM_MAX_BATCHED_TOKENS": "16"}
GRAPH_CASES = {
    "llama": ("llama", {}),
    "llama_greedy_argmax_cap512": ("llama", {"FERRUM_GREEDY_ARGMAX": "1", "FERRUM_KV_CAPACITY": "512"}),
    "qwen3_moe": ("qwen3_moe", {}),
    "qwen3_moe_greedy_argmax": ("qwen3_moe", {"FERRUM_GREEDY_ARGMAX": "1"}),
    "qwen3_moe_decode_varlen_unified_off": ("qwen3_moe", {"FERRUM_VLLM_DECODE_VARLEN": "1",
                                                          "FERRUM_QWEN_UNIFIED_PREFILL": "0"}),
}


def _graph_sizes(log) -> dict[int, int]:
    out = {}
    for key, n in log.counts.items():
        if key.startswith("decode:cuda_graph[bs="):
            out[int(key[len("decode:cuda_graph[bs="):-1])] = n
    return out


@pytest.mark.skipif(not torch.cuda.is_available() or not ferrum_ext.cuda_ops_available(),
                    reason="needs CUDA and the built extension")
@pytest.mark.parametrize("case", sorted(GRAPH_CASES))
def test_cuda_graph_decode_matches_eager(hfx, tmp_path, case):
    family, extra = GRAPH_CASES[case]
    config_cls, model_cls, fam_extra = FAMILIES[family]
    hfx.save_hf(model_cls, config_cls(**COMMON, **fam_extra), tmp_path)
    env_vars = {**GRAPH_BASE, **extra}
    eager = fm.from_pretrained(str(tmp_path), torch.bfloat16, "cuda", env=Qwen3MoeRuntimeEnv.from_env_vars(env_vars))
    assert eager.graphs is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # clean request on CUDA: no "run eagerly" warning
        model = fm.from_pretrained(str(tmp_path), torch.bfloat16, "cuda",
                                   env=Qwen3MoeRuntimeEnv.from_env_vars({**env_vars, "FERRUM_MOE_GRAPH": "1"}))
    assert model.graphs is not None

    prompts = hfx.prompts_of([5, 33, 17, 64, 9, 21, 3], 256, seed=11)
    want = eager.generate(prompts, STEPS)
    got = model.generate(prompts, STEPS)
    strict = env_vars["FERRUM_KV_CAPACITY"] == "256"
    for prompt, w, g in zip(prompts, want, got):
        if g == w:
            continue
        step = next(i for i, (a, b) in enumerate(zip(w, g)) if a != b)
        assert not strict, (f"graph decode diverged from eager at step {step} of prompt len {len(prompt)}: "
                            f"graph {g[step]} vs eager {w[step]} (same kernels and shapes: must be identical)")
        logits = eager.logits(prompt + w[:step])[-1]  # eager fp32 logits before the diverging token
        gap = (logits[w[step]] - logits[g[step]]).item()
        assert abs(gap) <= TIE * logits.abs().max().item(), (len(prompt), step, w[step], g[step], gap)

    sizes = _graph_sizes(model.log)
    want_sizes = 2 if extra.get("FERRUM_QWEN_UNIFIED_PREFILL") == "0" else 3
    assert len(sizes) >= want_sizes, model.log.summary()  # several batch sizes, each replayed many times
    assert set(sizes) == set(model.graphs.graphs)
    for b in sizes:  # captured once per batch size, lazily
        assert model.log.counts[f"decode:cuda_graph_capture[bs={b}]"] == 1, model.log.summary()
        assert model.graphs.graphs[b].graph is not None
    # Every eager decode step was a graph replay, and the replayed paths are the eager ones, step for step.
    replays = sum(sizes.values())
    assert replays == sum(n for k, n in eager.log.counts.items() if k.startswith("attention:decode")), (
        model.log.summary(), eager.log.summary())
    for key, n in eager.log.counts.items():
        assert model.log.counts[key] == n, (key, model.log.summary(), eager.log.summary())
    if "FERRUM_GREEDY_ARGMAX" in extra:
        assert model.log.has("sample:decode:greedy_argmax[cuda]")
    else:
        assert model.log.has("sample:decode:logits_to_host")

    # The captured graphs keep working after the run: a second generate replays them (no new captures).
    again = model.generate(prompts[:4], 8)  # the first 4 prompts: the same schedule as in the first run
    if strict:
        assert again == [w[:8] for w in want[:4]]
    for b in model.graphs.graphs:
        assert model.log.counts[f"decode:cuda_graph_capture[bs={b}]"] == 1
