"""Diagnose the chained-MoE determinism failure (tests/kernels/test_moe.py::test_chained_layers_back_to_back).

    python scripts/diagnose_moe_chain.py            # GPU (H100), < 60 s
    python scripts/diagnose_moe_chain.py --cpu      # CPU self-check of the script (reference path)

Reproduces the test's chain (E 64, k 8, H 512, I 256, bf16, seed 11): 6 layers of
moe_route(router logits of the previous output) -> fused_moe (auto tier), then two fused_moe calls back
to back; once with the test's old `* 2.0` between layers ("x2") and once with the RMS norm the test now
uses ("rms"), at T = 1, 3, 16. Runs step() N times (buffers poisoned before run 0 only, as in the test)
and records every stage: router logits, route weights / ids, moe_align of the ids at the tier's
block_m (sorted_pair_ids, block_expert_ids, num_padded), each fused_moe output, the next layer's input.

For each stage it prints whether all runs are bit-identical (compared as integers, so NaN == NaN),
whether torch.equal says so (False on any NaN), non-finite counts, and for the first stage that differs
in its bits: max |diff|, rows and columns. Then, on the recorded inputs of the first diverging layer (or
of the first stage with NaN, or of the last call), it re-runs fused_moe 20 times per variant (fresh out,
reused out, synchronize between calls, poisoned out) for each forced tier (gemv, small, prefill) and the
auto tier, and reports whether it is deterministic in isolation. The fused_moe GEMMs are not exposed one
by one; the tiers are compared through `tier=`.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ferrum_ext  # noqa: E402
from ferrum_ext import ops, reference  # noqa: E402
from ferrum_ext.testing import poison_, rel_error, same_bits  # noqa: E402

E, TOP_K, H, I, LAYERS = 64, 8, 512, 256, 6
GEMV_BLOCK_M, SMALL_BLOCK_M = 4, 16  # csrc/moe/moe_common.cuh (kGemvBlockM, kSmallBlockM)


def nonfinite(t):
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def describe_diff(a, b):
    """Rows / columns where the bits differ, max |a - b| over finite pairs."""
    if a.is_floating_point():
        ai = a.contiguous().view({2: torch.int16, 4: torch.int32}[a.element_size()])
        bi = b.contiguous().view(ai.dtype)
        ne = ai != bi
    else:
        ne = a != b
    idx = ne.nonzero()
    if ne.dim() == 1:
        where = f"indices {idx.flatten().tolist()[:24]}"
    else:
        rows = sorted(set(idx[:, 0].tolist()))
        cols = sorted(set(idx[:, 1].tolist()))
        where = f"rows {rows[:24]}, {len(cols)} columns (first {cols[:12]})"
    af, bf = a.double(), b.double()
    fin = torch.isfinite(af) & torch.isfinite(bf)
    md = float((af - bf)[fin & ne].abs().max()) if bool((fin & ne).any()) else float("nan")
    return f"{int(ne.sum())} elements differ; {where}; max |diff| (finite) {md:.3e}"


def build_problem(num_tokens, device):
    g = torch.Generator(device="cpu").manual_seed(11)
    ws = [((torch.randn(E, 2 * I, H, generator=g) / math.sqrt(H)).to(device).bfloat16(),
           (torch.randn(E, H, I, generator=g) / math.sqrt(I)).to(device).bfloat16(),
           torch.randn(H, E, generator=g).to(device))
          for _ in range(LAYERS)]
    x0 = torch.randn(num_tokens, H, generator=g).to(device).bfloat16()
    fixed_w, fixed_ids = reference.moe_route(torch.randn(num_tokens, E, generator=g).to(device), TOP_K, True)
    return ws, x0, fixed_w, fixed_ids


def router_logits(x, router):
    return (x.float()[:, :, None] * router[None]).sum(1)


def rms_norm(o):
    xf = o.float()
    return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + 1e-6)).to(o.dtype)


BETWEEN = {"x2": lambda o: o * 2.0, "rms": rms_norm}


def auto_block_m(num_tokens):
    return GEMV_BLOCK_M if num_tokens < 4 else SMALL_BLOCK_M if num_tokens < 32 else None


def run_chain(num_tokens, variant, runs, device):
    """Returns (list of per-run dicts stage -> tensor, list of stage names in order, layer inputs of run 0)."""
    ws, x0, fixed_w, fixed_ids = build_problem(num_tokens, device)
    bufs = [torch.empty_like(x0) for _ in range(LAYERS + 2)]
    between = BETWEEN[variant]
    block_m = auto_block_m(num_tokens)
    records, order, inputs0 = [], [], {}

    for r in range(runs):
        if r == 0:
            for b in bufs:
                poison_(b)
        rec = {}
        names = []

        def keep(name, t):
            rec[name] = t.clone()
            names.append(name)

        x = x0
        for i, (w13, w2, router) in enumerate(ws):
            logits = router_logits(x, router)
            keep(f"L{i}.logits", logits)
            w, ids = ops.moe_route(logits, TOP_K, True)
            keep(f"L{i}.route_w", w)
            keep(f"L{i}.route_ids", ids)
            if block_m is not None:  # not in the test's step(): a separate call, on the same ids
                sp, be, npad = ops.moe_align(ids, E, block_m)
                keep(f"L{i}.align_sorted", sp)
                keep(f"L{i}.align_blocks", be)
                keep(f"L{i}.align_npad", npad)
            if r == 0:
                inputs0[i] = (x.clone(), w13, w2, w.clone(), ids.clone())
            out = ops.fused_moe(x, w13, w2, w, ids, out=bufs[i])
            keep(f"L{i}.fused_out", out)
            x = between(out)
            keep(f"L{i}.next_input", x)
        if r == 0:
            inputs0[LAYERS] = (x.clone(), ws[0][0], ws[0][1], fixed_w, fixed_ids)
        a = ops.fused_moe(x, ws[0][0], ws[0][1], fixed_w, fixed_ids, out=bufs[LAYERS])
        if r == 0:
            inputs0[LAYERS + 1] = (a.clone(), ws[1][0], ws[1][1], fixed_w, fixed_ids)
        final = ops.fused_moe(a, ws[1][0], ws[1][1], fixed_w, fixed_ids, out=bufs[LAYERS + 1])
        keep("B0.fused_out", a)
        keep("B1.fused_out(final)", final)
        if device == "cuda":
            torch.cuda.synchronize()
        records.append(rec)
        order = names
    return records, order, inputs0


def layer_key(stage):
    head = stage.split(".")[0]
    return LAYERS + int(head[1:]) if head.startswith("B") else int(head[1:])


def isolation(inputs, device, reps=20):
    """fused_moe on fixed inputs, 20 calls per variant and tier: deterministic in isolation?"""
    x, w13, w2, w, ids = inputs
    lines = []
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for tier in ("gemv", "small", "prefill", None):
        ref = ops.fused_moe(x, w13, w2, w, ids, tier=tier).clone()
        sync()
        results = {}
        # fresh out, no sync
        outs = [ops.fused_moe(x, w13, w2, w, ids, tier=tier) for _ in range(reps)]
        results["fresh out"] = outs
        # reused out, no sync
        buf = torch.empty_like(x)
        outs = []
        for _ in range(reps):
            outs.append(ops.fused_moe(x, w13, w2, w, ids, tier=tier, out=buf).clone())
        results["reused out"] = outs
        # reused out, synchronize between calls
        outs = []
        for _ in range(reps):
            ops.fused_moe(x, w13, w2, w, ids, tier=tier, out=buf)
            sync()
            outs.append(buf.clone())
        results["reused out + sync"] = outs
        # poisoned out every call
        outs = []
        for _ in range(reps):
            poison_(buf)
            outs.append(ops.fused_moe(x, w13, w2, w, ids, tier=tier, out=buf).clone())
        results["poisoned out"] = outs
        # back to back with a garbage-producing call in between (different inputs, same sizes)
        outs = []
        junk = torch.randn_like(x.float()).mul_(1e3).to(x.dtype)
        for _ in range(reps):
            ops.fused_moe(junk, w13, w2, w, ids, tier=tier)
            outs.append(ops.fused_moe(x, w13, w2, w, ids, tier=tier).clone())
        results["after a junk call"] = outs
        sync()
        parts = []
        for name, outs in results.items():
            bad = [k for k, o in enumerate(outs) if not same_bits(o, ref)]
            parts.append(f"{name}: {'OK' if not bad else f'{len(bad)}/{reps} differ (first: ' + describe_diff(outs[bad[0]], ref) + ')'}")
        teq = torch.equal(ref, ref.clone())
        lines.append(f"    tier={tier or 'auto':8s} NaN/inf {nonfinite(ref):4d}  torch.equal(out, out.clone())={teq}  | "
                     + "; ".join(parts))
    return lines


def analyse(num_tokens, variant, runs, device):
    t0 = time.perf_counter()
    records, order, inputs0 = run_chain(num_tokens, variant, runs, device)
    base = records[0]
    print(f"\n=== T={num_tokens} between-layers={variant} auto tier="
          f"{'gemv' if num_tokens < 4 else 'small' if num_tokens < 32 else 'prefill'} runs={runs} ===")
    print(f"  {'stage':22s} {'bits equal':>10s} {'torch.equal':>11s} {'nonfinite':>9s} {'|max|':>10s}")
    first_bits, first_teq, first_nan = None, None, None
    for name in order:
        bits_ok = all(same_bits(rec[name], base[name]) for rec in records[1:])
        teq_ok = all(torch.equal(rec[name], base[name]) for rec in records[1:])
        nf = nonfinite(base[name])
        t = base[name]
        mx = float(t.double()[torch.isfinite(t.double())].abs().max()) if t.is_floating_point() and bool(
            torch.isfinite(t.double()).any()) else float(t.abs().max()) if not t.is_floating_point() else float("nan")
        flag = "" if bits_ok and teq_ok else "   <-- bits differ" if not bits_ok else "   <-- torch.equal False only (NaN)"
        print(f"  {name:22s} {str(bits_ok):>10s} {str(teq_ok):>11s} {nf:9d} {mx:10.3e}{flag}")
        if not bits_ok and first_bits is None:
            first_bits = name
            for k, rec in enumerate(records[1:], 1):
                if not same_bits(rec[name], base[name]):
                    print(f"      run {k} vs run 0: {describe_diff(rec[name], base[name])}")
        if not teq_ok and first_teq is None:
            first_teq = name
        if nf and first_nan is None:
            first_nan = name
    # The test's own check: final of runs 1.. vs run 0.
    final = "B1.fused_out(final)"
    test_verdict = all(torch.equal(rec[final], base[final]) for rec in records[1:])
    print(f"  test's check torch.equal(step(), got): {'PASS' if test_verdict else 'FAIL'}; bitwise: "
          f"{'identical' if all(same_bits(rec[final], base[final]) for rec in records[1:]) else 'DIFFERENT'}")
    if first_nan is not None:
        rows = (~torch.isfinite(base[first_nan].float())).any(-1).nonzero().flatten().tolist() \
            if base[first_nan].dim() == 2 else []
        print(f"  first non-finite stage: {first_nan} (rows {rows}): torch.equal is False on NaN even for "
              f"identical bits")
    # Reference check of each layer on run 0's own inputs (cheap).
    errs = []
    for i in range(LAYERS + 2):
        x, w13, w2, w, ids = inputs0[i]
        out = base[f"L{i}.fused_out"] if i < LAYERS else base["B0.fused_out" if i == LAYERS else final]
        errs.append(rel_error(out, reference.fused_moe_grouped_reference(x, w13, w2, w, ids)))
    print("  rel error vs reference per call: " + " ".join(f"{e:.1e}" for e in errs))
    target = first_bits or first_teq or first_nan
    layer = layer_key(target) if target else LAYERS + 1
    why = ("first bit-diverging stage " + first_bits if first_bits else
           "first stage where torch.equal fails: " + first_teq if first_teq else
           "first non-finite stage " + first_nan if first_nan else "no divergence: the last call")
    print(f"  isolation on call {layer} ({why}), 20 calls per variant:")
    for line in isolation(inputs0[layer], device):
        print(line)
    print(f"  ({time.perf_counter() - t0:.1f} s)")
    return first_bits, test_verdict, first_nan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu", action="store_true", help="run on CPU (reference path): checks the script only")
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--tokens", type=int, nargs="*", default=[1, 3, 16])
    args = ap.parse_args()
    device = "cpu" if args.cpu else "cuda"
    if device == "cuda":
        assert torch.cuda.is_available(), "no CUDA device (use --cpu for a dry run)"
        assert ferrum_ext.cuda_ops_available(), "ferrum_ext._C not built"
        print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, ferrum_ext {ferrum_ext.__file__}")
    start = time.perf_counter()
    summary = []
    for variant in ("x2", "rms"):
        for t in args.tokens:
            first_bits, test_pass, first_nan = analyse(t, variant, args.runs, device)
            summary.append((t, variant, first_bits, test_pass, first_nan))
    print("\n=== SUMMARY ===")
    for t, variant, first_bits, test_pass, first_nan in summary:
        if first_bits:
            verdict = f"NONDETERMINISTIC: first bit-diverging stage {first_bits}"
        elif not test_pass:
            verdict = (f"bit-identical, but the test's torch.equal FAILS because of NaN (first non-finite stage "
                       f"{first_nan}): a test artefact")
        else:
            verdict = "bit-identical, torch.equal passes"
        print(f"  T={t:3d} {variant:3s}: {verdict}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
