"""Every knob of DESIGN.md section 3: toggling it keeps the greedy tokens and changes the path taken.

One tiny Qwen3-MoE checkpoint; a base env that chunks prefills (FERRUM_MAX_BATCHED_TOKENS=8) and admits
at most 3 sequences, so runs mix prefill chunks with decodes ("mixed" steps) and admit as others finish.
"""

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

import ferrum_ext.models as fm  # noqa: E402
from ferrum_ext.models import cuda_graphs  # noqa: E402
from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv  # noqa: E402

BASE = {"FERRUM_MAX_BATCHED_TOKENS": "8", "FERRUM_PAGED_MAX_SEQS": "3"}
LENGTHS, NEW = [3, 20, 6, 13, 2], 6


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3moe")
    config = transformers.Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                         moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                         max_position_embeddings=128, mlp_only_layers=[1])
    torch.manual_seed(0)
    transformers.Qwen3MoeForCausalLM(config).save_pretrained(path)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in LENGTHS]
    return str(path), prompts


def run(ckpt, extra=None, repeat=1):
    path, prompts = ckpt
    env = Qwen3MoeRuntimeEnv.from_env_vars({**BASE, **(extra or {})})
    model = fm.from_pretrained(path, torch.float32, "cpu", env=env)
    outs = [model.generate(prompts, NEW) for _ in range(repeat)]
    return outs, model.log


@pytest.fixture(scope="module")
def baseline(ckpt):
    outs, log = run(ckpt)
    return outs[0], log


def count(log, prefix):
    return sum(n for key, n in log.counts.items() if key.startswith(prefix))


def test_baseline_paths(baseline):
    _, log = baseline
    for prefix in ("attention:mixed:varlen[vllm]", "attention:decode:paged_decode[vllm]",
                   "attention:prefill:varlen[vllm]", "moe:decode:bucketed_gemv", "moe:mixed:bucketed_small_m",
                   "sample:decode:logits_to_host", "sample:mixed:logits_to_host", "kv:paged"):
        assert log.has(prefix), (prefix, log.summary())
    assert not log.has("prefix_cache")


CASES = {
    "vllm_paged_attn_off": ({"FERRUM_USE_VLLM_PAGED_ATTN": "0"},
                            lambda log, base: log.has("attention:decode:paged_decode[nhd]")
                            and not any("[vllm]" in k for k in log.counts)),
    "decode_varlen": ({"FERRUM_VLLM_DECODE_VARLEN": "1"},
                      lambda log, base: log.has("attention:decode:varlen[vllm]") and not log.has("attention:decode:paged")),
    "tiled_q4": ({"FERRUM_VLLM_VARLEN_TILED_Q4": "1"},
                 lambda log, base: log.has("attention:mixed:varlen_tiled_q4") and log.has("attention:decode:paged")),
    "fa_layout_varlen": ({"FERRUM_FA_LAYOUT_VARLEN": "1"},
                         lambda log, base: log.has("attention:mixed:varlen[nhd]")
                         and log.has("attention:decode:paged_decode[vllm]")),
    "greedy_argmax": ({"FERRUM_GREEDY_ARGMAX": "1"},
                      lambda log, base: log.has("sample:decode:greedy_argmax") and log.has("sample:mixed:greedy_argmax")),
    "greedy_not_unified": ({"FERRUM_GREEDY_ARGMAX": "1", "FERRUM_UNIFIED_GREEDY_ARGMAX": "0"},
                           lambda log, base: log.has("sample:decode:greedy_argmax")
                           and log.has("sample:mixed:logits_to_host")),
    "moe_per_pair": ({"FERRUM_MOE_BUCKETED": "0"},
                     lambda log, base: log.has("moe:decode:per_pair") and not log.has("moe:decode:bucketed")),
    "batch_threshold_2": ({"FERRUM_MOE_BATCH_THRESHOLD": "2"},
                          lambda log, base: count(log, "attention:decode") < count(base, "attention:decode")
                          and log.has("moe:decode:bucketed_small_m")),
    "moe_batched_off": ({"FERRUM_MOE_BATCH_THRESHOLD": "2", "FERRUM_MOE_BATCHED": "0"},
                        lambda log, base: count(log, "attention:decode") == count(base, "attention:decode")),
    "prefill_threshold_4": ({"FERRUM_MOE_PREFILL_THRESHOLD": "4"},
                            lambda log, base: log.has("moe:mixed:bucketed_prefill")
                            and not base.has("moe:mixed:bucketed_prefill")),
    "batched_decode_off": ({"FERRUM_MOE_BATCHED_DECODE": "0"},
                           lambda log, base: not log.has("moe:mixed:bucketed_small_m")
                           and log.has("moe:mixed:bucketed_prefill")),
    "unified_prefill_off": ({"FERRUM_QWEN_UNIFIED_PREFILL": "0"},
                            lambda log, base: not log.has("attention:mixed") and log.has("attention:prefill")),
    "scratch_4": ({"FERRUM_MAX_BATCHED_TOKENS": "4"},
                  lambda log, base: count(log, "attention:prefill") + count(log, "attention:mixed")
                  > count(base, "attention:prefill") + count(base, "attention:mixed")),
    "paged_kv_off": ({"FERRUM_METAL_PAGED_KV": "0"},
                     lambda log, base: log.has("kv:contiguous") and not log.has("kv:paged")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_knob_keeps_tokens_and_changes_path(ckpt, baseline, name):
    extra, changed = CASES[name]
    outs, log = run(ckpt, extra)
    assert outs[0] == baseline[0]
    assert changed(log, baseline[1]), log.summary()


def test_prefix_cache_hits_on_second_run(ckpt, baseline):
    outs, log = run(ckpt, {"FERRUM_PREFIX_CACHE": "1"}, repeat=2)
    assert outs[0] == outs[1] == baseline[0]
    assert log.counts["prefix_cache:hit_tokens"] == 16 * 1  # the 20-token prompt: one full block of 16


@pytest.mark.parametrize("var,tag", [
    ("FERRUM_DECODE_OP_PROFILE", "[ferrum decode_op_profile]"), ("FERRUM_MOE_PROFILE", "[ferrum moe_profile]"),
    ("FERRUM_RBD_PROF", "[ferrum rbd_prof]"), ("FERRUM_UNIFIED_LAYER_PROF", "[ferrum unified_layer_prof]"),
    ("FERRUM_QWEN_UNIFIED_TRACE", "[ferrum unified_trace]")])
def test_profiling_knobs_print_to_stderr(ckpt, baseline, capsys, var, tag):
    extra = {var: "1"}
    if var == "FERRUM_UNIFIED_LAYER_PROF":
        extra["FERRUM_UNIFIED_LAYER_PROF_EVERY"] = "1"
    outs, _ = run(ckpt, extra)
    assert outs[0] == baseline[0]
    assert tag in capsys.readouterr().err


GRAPH_ON = {"FERRUM_MOE_GRAPH": "1", "FERRUM_VLLM_MOE": "1"}


@pytest.mark.parametrize("extra,why", [
    ({"FERRUM_MOE_GRAPH": "1"}, "not clean"),
    ({**GRAPH_ON, "FERRUM_MOE_HOST_ROUTE": "1"}, "not clean"),
    (GRAPH_ON, "only for CUDA models"),  # clean, but this model is on the CPU
])
def test_moe_graph_request_warns_once_and_runs_eagerly(ckpt, baseline, extra, why):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs, log = run(ckpt, extra)
    graph_warnings = [w for w in caught if "FERRUM_MOE_GRAPH=1" in str(w.message)]
    assert len(graph_warnings) == 1, [str(w.message) for w in caught]
    assert why in str(graph_warnings[0].message) and "run eagerly" in str(graph_warnings[0].message)
    assert graph_warnings[0].filename == __file__  # points at the caller of from_pretrained
    assert outs[0] == baseline[0]
    assert not log.has("decode:cuda_graph") and log.has("attention:decode:paged_decode")


@pytest.mark.parametrize("extra", [{}, {"FERRUM_VLLM_MOE": "1"}, {"FERRUM_MOE_HOST_ROUTE": "1"}])
def test_no_graph_warning_unless_requested(ckpt, extra):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = Qwen3MoeRuntimeEnv.from_env_vars({**BASE, **extra})
        model = fm.from_pretrained(ckpt[0], torch.float32, "cpu", env=env)
    assert model.graphs is None


@pytest.fixture
def cuda_like(monkeypatch):
    """unavailable_reason() as if on a CUDA box with the extension built."""
    monkeypatch.setattr(cuda_graphs, "cuda_ops_available", lambda: True)
    return torch.device("cuda")


@pytest.fixture(scope="module")
def moe_net(ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fm.from_pretrained(ckpt[0], torch.float32, "cpu").net


@pytest.mark.parametrize("extra,dtype,fa2,why", [
    (GRAPH_ON, torch.bfloat16, False, None),
    (GRAPH_ON, torch.float16, False, None),
    ({**GRAPH_ON, "FERRUM_VLLM_DECODE_VARLEN": "1", "FERRUM_GREEDY_ARGMAX": "1"}, torch.bfloat16, False, None),
    ({"FERRUM_MOE_GRAPH": "1"}, torch.bfloat16, False, "not clean"),
    ({**GRAPH_ON, "FERRUM_MOE_HOST_ROUTE": "1"}, torch.bfloat16, False, "not clean"),
    (GRAPH_ON, torch.float32, False, "float16/bfloat16"),
    (GRAPH_ON, torch.bfloat16, True, "FERRUM_FA2"),
    ({**GRAPH_ON, "FERRUM_MOE_BUCKETED": "0"}, torch.bfloat16, False, "FERRUM_MOE_BUCKETED=0"),
    ({**GRAPH_ON, "FERRUM_DECODE_OP_PROFILE": "1"}, torch.bfloat16, False, "FERRUM_DECODE_OP_PROFILE"),
    ({**GRAPH_ON, "FERRUM_MOE_PROFILE": "1"}, torch.bfloat16, False, "FERRUM_MOE_PROFILE"),
    ({**GRAPH_ON, "FERRUM_RBD_PROF": "1"}, torch.bfloat16, False, "FERRUM_RBD_PROF"),
])
def test_graph_decision(cuda_like, moe_net, extra, dtype, fa2, why):
    env = Qwen3MoeRuntimeEnv.from_env_vars(extra)
    got = cuda_graphs.unavailable_reason(env, cuda_like, dtype, fa2, moe_net)
    assert (got is None) if why is None else (why in got), got


def test_graph_decision_without_extension(monkeypatch, moe_net):
    monkeypatch.setattr(cuda_graphs, "cuda_ops_available", lambda: False)
    env = Qwen3MoeRuntimeEnv.from_env_vars(GRAPH_ON)
    assert "compiled extension" in cuda_graphs.unavailable_reason(env, torch.device("cuda"), torch.bfloat16,
                                                                  False, moe_net)


def test_graph_decision_dense_model_ignores_moe_bucketed(cuda_like):
    env = Qwen3MoeRuntimeEnv.from_env_vars({**GRAPH_ON, "FERRUM_MOE_BUCKETED": "0"})
    assert cuda_graphs.unavailable_reason(env, cuda_like, torch.bfloat16, False, torch.nn.Linear(2, 2)) is None


@pytest.mark.parametrize("extra", [{}, {"FERRUM_GREEDY_ARGMAX": "1"}, {"FERRUM_VLLM_DECODE_VARLEN": "1"},
                                   {"FERRUM_QWEN_UNIFIED_PREFILL": "0"}])
def test_graph_runner_without_capture_keeps_tokens(ckpt, baseline, extra):
    """The graph runner's own code path (static buffers of the cache's full width, max_seq_len = capacity,
    log replay) with the forward rerun instead of a CUDA graph: same tokens, same op paths per step."""
    env_vars = {**BASE, **GRAPH_ON, "FERRUM_MOE_BATCH_THRESHOLD": "2", **extra}
    path, prompts = ckpt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "only for CUDA models"
        eager = fm.from_pretrained(path, torch.float32, "cpu", env=Qwen3MoeRuntimeEnv.from_env_vars(env_vars))
        model = fm.from_pretrained(path, torch.float32, "cpu", env=Qwen3MoeRuntimeEnv.from_env_vars(env_vars))
    model.graphs = cuda_graphs.DecodeGraphs(model, capture=False)
    want = eager.generate(prompts, NEW)
    assert want == baseline[0]
    assert model.generate(prompts, NEW) == want
    sizes = {k for k in model.log.counts if k.startswith("decode:cuda_graph[bs=")}
    assert len(sizes) >= 2, model.log.summary()  # batch sizes change as sequences come and go
    assert set(model.graphs.graphs) == {int(k.split("=")[1].rstrip("]")) for k in sizes}
    n_graph = count(model.log, "decode:cuda_graph[")
    assert n_graph == count(model.log, "attention:decode") == count(eager.log, "attention:decode")
    assert not model.log.has("decode:cuda_graph_capture")  # nothing captured without CUDA
    for key in eager.log.counts:  # every op path of the eager run shows up, step for step
        assert model.log.counts[key] == eager.log.counts[key], (key, model.log.summary(), eager.log.summary())
    if "FERRUM_GREEDY_ARGMAX" in extra:
        assert model.log.has("sample:decode:greedy_argmax")
