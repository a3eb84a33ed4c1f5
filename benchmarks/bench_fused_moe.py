"""Fused MoE layer (router to combine): moe_route + fused_moe, Qwen3-MoE shapes, bf16, random routing.

Work per layer of T tokens, top-k of E experts, hidden H, intermediate I (e = 2 bytes):
  weight bytes  = (distinct experts hit) * 3 * H * I * e       (w13 rows 2I x H, w2 H x I; each read once)
  + activations = T * H * e (hidden in) + T * H * e (out) + T * E * 4 (fp32 router logits)
  FLOPs         = 2 * T * k * 3 * H * I
Decode-sized T is weight-bandwidth-bound (rate: GB/s against the read ceiling); prefill-sized T is
tensor-core-bound (rate: TFLOP/s against the bf16 matmul ceiling). Both rates are printed for every T
(`variant` says which the row's pct_ceiling uses).

Ours runs w13 in the gate/up-interleaved layout the models load (ops.interleave_gate_up), where the
Hopper prefill tier fuses SiLU·mul into its gate_up GEMM. Variants: "eager" (Python wrappers,
launches included), "graph" (the same step captured in a CUDA graph and replayed: the launch-free
number a captured decode step sees), "graph ..., w13 hf order" (w13 as Hugging Face stores it, the
other accepted layout); on Hopper, for T >= 256, also
"graph ..., tier prefill_mma" and "..., tier prefill_sm90" (both prefill tiers forced: "auto" takes the CUTLASS
tier from T*k >= ops.moe.MOE_SM90_MIN_PAIRS). Baseline, timed in the same
run: a PyTorch pipeline (softmax / top-k, argsort, torch._grouped_mm for both GEMMs, index_add
combine; a per-expert loop of matmuls where _grouped_mm is missing).
Inputs come from a generator seeded with T for each case, so every run (whatever ran before it)
times the same routing and hits the same experts: at decode sizes the rate depends on that count.
"""

import os

import torch

from ferrum_ext import ops

QWEN3_30B = dict(name="Qwen3-30B-A3B", E=128, k=8, H=2048, I=768)
QWEN3_235B = dict(name="Qwen3-235B-A22B", E=128, k=8, H=4096, I=1536)
CASES = [(QWEN3_30B, t) for t in (1, 4, 16, 64, 256, 1024, 4096, 16384)] + [(QWEN3_235B, t) for t in (1, 64, 4096)]
ROTATE = 3
# Per-kernel breakdown (torch.profiler) of T >= 1024, printed to the log. Opt-in: once the profiler has
# run, CUPTI stays attached to the process and later benchmarks of short kernels ran slower (greedy_argmax
# bf16 B=1: 34 us after it against 7.6 us alone, H100), so a full run leaves it off.
BREAKDOWN = os.environ.get("FERRUM_BENCH_MOE_BREAKDOWN") == "1"


def torch_moe(x, logits, w13, w2, top_k):
    """The PyTorch baseline pipeline (no host sync)."""
    num_tokens, hidden = x.shape
    num_experts, inter = w13.shape[0], w13.shape[1] // 2
    w, ids = torch.topk(torch.softmax(logits.float(), -1), top_k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // top_k
    offs = torch.cumsum(torch.bincount(flat, minlength=num_experts), 0).to(torch.int32)
    xs = x[tok]
    gu = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)
    h = torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]
    y = torch._grouped_mm(h, w2.transpose(1, 2), offs=offs)
    y = y * w.reshape(-1)[order, None].to(y.dtype)
    return torch.zeros_like(x).index_add_(0, tok, y)


def torch_moe_loop(x, logits, w13, w2, top_k):
    """Fallback baseline where torch._grouped_mm is missing: a loop over experts (syncs on the host)."""
    inter = w13.shape[1] // 2
    w, ids = torch.topk(torch.softmax(logits.float(), -1), top_k, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    out = torch.zeros_like(x, dtype=torch.float32)
    for e in torch.unique(ids).tolist():
        t, j = torch.nonzero(ids == e, as_tuple=True)
        gu = x[t] @ w13[e].t()
        y = (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w2[e].t()
        out.index_add_(0, t, y.float() * w[t, j, None])
    return out.to(x.dtype)


def ours(x, logits, w13, w2, top_k, out, tier=None, interleaved=True):
    w, ids = ops.moe_route(logits, top_k, True)
    return ops.fused_moe(x, w13, w2, w, ids, out=out, tier=tier, w13_interleaved=interleaved)


def _short_name(name: str) -> str:
    if "GemmUniversal" in name:
        return "cutlass_grouped_gemm"
    return name.split("<")[0].split("(")[0].split("::")[-1].strip()


def kernel_breakdown(fn, iters: int = 3) -> str:
    """Per-kernel device time (us, mean over iters) of one call of fn, in launch order (torch.profiler,
    L2 warm): shows where the layer's time goes, e.g. GEMM against align/gather/combine."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type.name == "CUDA" and "Memset" not in e.name
                     and "Memcpy" not in e.name), key=lambda e: e.time_range.start)
    if not events or len(events) % iters:
        return f"unavailable ({len(events)} kernel events for {iters} calls)"
    per = len(events) // iters
    parts = []
    for i in range(per):
        us = sum(events[j * per + i].time_range.elapsed_us() for j in range(iters)) / iters
        parts.append(f"{_short_name(events[i].name)} {us:.1f}")
    total = sum(e.time_range.elapsed_us() for e in events) / iters
    return ", ".join(parts) + f" | sum {total:.1f} us"


def _graphs(sets, fn):
    graphs = []
    for args in sets:
        fn(*args)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn(*args)
        graphs.append((g,))
    return graphs


def _baseline():
    try:
        x = torch.randn(8, 64, device="cuda", dtype=torch.bfloat16)
        w13 = torch.randn(4, 128, 64, device="cuda", dtype=torch.bfloat16)
        w2 = torch.randn(4, 64, 64, device="cuda", dtype=torch.bfloat16)
        torch_moe(x, torch.randn(8, 4, device="cuda"), w13, w2, 2)
        return torch_moe, "torch _grouped_mm pipeline"
    except (AttributeError, RuntimeError, TypeError):
        return torch_moe_loop, "torch per-expert loop"


def run(ctx):
    rows = []
    baseline, baseline_name = _baseline()
    dtype = torch.bfloat16
    gen = torch.Generator(device="cuda")
    for model, num_tokens in CASES:
        E, k, H, I = model["E"], model["k"], model["H"], model["I"]
        gen.manual_seed(num_tokens)
        w13_hf = torch.randn(E, 2 * I, H, device="cuda", dtype=dtype) / H**0.5
        w13 = ops.interleave_gate_up(w13_hf)
        w2 = torch.randn(E, H, I, device="cuda", dtype=dtype) / I**0.5
        sets = [(torch.randn(num_tokens, H, device="cuda", dtype=dtype, generator=gen),
                 torch.randn(num_tokens, E, device="cuda", generator=gen),
                 torch.empty(num_tokens, H, device="cuda", dtype=dtype)) for _ in range(ROTATE)]
        hit = sum(int(torch.unique(torch.topk(lg, k, -1).indices).numel()) for _, lg, _ in sets) / ROTATE
        weight_bytes = hit * 3 * H * I * 2 + num_tokens * (2 * H * 2 + E * 4)
        flops = 2 * num_tokens * k * 3 * H * I
        case = f"{model['name']} T={num_tokens} (experts hit {hit:.0f})"

        t_eager = ctx.time(lambda x, lg, o: ours(x, lg, w13, w2, k, o), sets)
        graphs = _graphs(sets, lambda x, lg, o: ours(x, lg, w13, w2, k, o))
        t_graph = ctx.time(lambda g: g.replay(), graphs)
        hf_graphs = _graphs(sets, lambda x, lg, o: ours(x, lg, w13_hf, w2, k, o, interleaved=False))
        t_graph_hf = ctx.time(lambda g: g.replay(), hf_graphs)
        del hf_graphs
        forced = []  # (tier, seconds): both prefill tiers forced, to check the auto threshold
        if num_tokens >= 256 and torch.cuda.get_device_capability()[0] == 9:
            # "auto" takes the Hopper tier from ops.moe.MOE_SM90_MIN_PAIRS pairs, mma.sync below.
            for tier in ("prefill_mma", "prefill_sm90"):
                tier_graphs = _graphs(sets, lambda x, lg, o: ours(x, lg, w13, w2, k, o, tier))
                forced.append((tier, ctx.time(lambda g: g.replay(), tier_graphs)))
                del tier_graphs
        if num_tokens >= 1024 and BREAKDOWN:
            x, lg, o = sets[0]
            hopper = torch.cuda.get_device_capability()[0] == 9
            tiers = ["auto", "prefill_mma", "prefill_sm90"] if hopper else ["auto"]
            for tier in tiers:
                try:
                    line = kernel_breakdown(lambda: ours(x, lg, w13, w2, k, o, tier))
                except Exception as exc:  # the profiler is a diagnostic only
                    line = f"unavailable ({type(exc).__name__}: {exc})"
                print(f"fused_moe kernels, {case}, tier {tier}: {line}", flush=True)
        timings = [("graph", t_graph), ("eager", t_eager)]
        t_base = ctx.time(lambda x, lg, o: baseline(x, lg, w13_hf, w2, k), sets)
        for variant, t in timings:
            bw = ctx.row("fused_moe", case, dtype, t, bytes_moved=weight_bytes, baseline=t_base,
                         baseline_name=baseline_name, variant=f"{variant} GB/s")
            fl = ctx.row("fused_moe", case, dtype, t, flops=flops, baseline=t_base,
                         baseline_name=baseline_name, variant=f"{variant} TFLOP/s")
            rows += [bw, fl]
        rows.append(ctx.row("fused_moe", case, dtype, t_graph_hf, bytes_moved=weight_bytes, baseline=t_base,
                            baseline_name=baseline_name, variant="graph GB/s, w13 hf order"))
        for tier, t in forced:
            rows.append(ctx.row("fused_moe", case, dtype, t, flops=flops, baseline=t_base,
                                baseline_name=baseline_name, variant=f"graph TFLOP/s, tier {tier}"))
        del w13, w13_hf, w2, sets, graphs
        torch.cuda.empty_cache()
    return rows
