"""CPU emulation of the multi-CTA moe_align (csrc/moe/route_align.cuh: count -> scan -> scatter),
step for step with the kernels' index math (CTA chunks, warp subranges, rounds of 32 * kAlignUnroll
pairs, match_any ranks, tile binary search, padding fill), checked against reference.moe_align.

    python scripts/emulate_moe_align_multi.py
"""
import os
import random
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ferrum_ext import reference  # noqa: E402

MIN_PAIRS, MAX_EXPERTS, WARPS, MAX_CTAS, MIN_CHUNK, UNROLL = 4096, 1024, 8, 64, 2048, 4


def split(P, E):  # align_split in route_align.cu
    if P < MIN_PAIRS or E > MAX_EXPERTS:
        return 0, 0
    g = WARPS * 32
    chunk = max(MIN_CHUNK, (P + MAX_CTAS - 1) // MAX_CTAS)
    chunk = (chunk + g - 1) // g * g
    return chunk, (P + chunk - 1) // chunk


def emulate(ids, E, bm, poison=-7):
    P = len(ids)
    chunk, C = split(P, E)
    assert C > 0 and C <= MAX_CTAS and chunk % (WARPS * 32) == 0
    max_padded, max_tiles = reference.moe_align_sizes(P, E, bm)
    valid = lambda e: 0 <= e < E  # noqa: E731
    sorted_ids = [poison] * max_padded
    block_expert = [poison] * max_tiles
    # count
    counts = [0] * (C * E)
    for c in range(C):
        for p in range(c * chunk, min(P, c * chunk + chunk)):
            if valid(ids[p]):
                counts[c * E + ids[p]] += 1
    # scan: warp per expert, 32 CTAs per round
    total = [0] * E
    for e in range(E):
        carry = 0
        for c0 in range(0, C, 32):
            vs = [counts[(c0 + l) * E + e] if c0 + l < C else 0 for l in range(32)]
            incl = [sum(vs[: l + 1]) for l in range(32)]
            for l in range(32):
                if c0 + l < C:
                    counts[(c0 + l) * E + e] = carry + incl[l] - vs[l]
            carry += incl[31]
        total[e] = carry
    per_lane = (E + 31) // 32
    start, ends = [0] * E, [0] * E
    run = 0
    for lane in range(32):  # the warp-0 scan, lane ranges in order
        e0 = min(E, lane * per_lane)
        e1 = min(E, e0 + per_lane)
        for e in range(e0, e1):
            start[e] = run
            run += (total[e] + bm - 1) // bm * bm
            ends[e] = run
    num_padded = run
    # scatter
    written = set()
    for c in range(C):
        c_begin, c_end = c * chunk, min(P, c * chunk + chunk)
        wchunk = chunk // WARPS
        hist = [[0] * E for _ in range(WARPS)]
        rng = []
        for w in range(WARPS):
            pb = min(c_end, c_begin + w * wchunk)
            pe = min(c_end, pb + wchunk)
            rng.append((pb, pe))
            for p in range(pb, pe):
                if valid(ids[p]):
                    hist[w][ids[p]] += 1
        for e in range(E):
            run = start[e] + counts[c * E + e]
            for w in range(WARPS):
                n = hist[w][e]
                hist[w][e] = run
                run += n
        for w, (pb, pe) in enumerate(rng):
            for base in range(pb, pe, 32 * UNROLL):
                for q in range(UNROLL):
                    lanes = [base + q * 32 + l for l in range(32)]
                    ev = [ids[p] if p < pe and valid(ids[p]) else -1 for p in lanes]
                    upd = {}
                    for l, p in enumerate(lanes):
                        e = ev[l]
                        if e < 0:
                            continue
                        rank = sum(1 for m in range(l) if ev[m] == e)
                        s = hist[w][e] + rank
                        assert s not in written, "slot written twice"
                        written.add(s)
                        sorted_ids[s] = p
                        upd[e] = hist[w][e] + sum(1 for m in range(32) if ev[m] == e)
                    for e, v in upd.items():
                        hist[w][e] = v
    # tiles and padding (grid-stride order does not matter: disjoint slots)
    for t in range(max_tiles):
        s = t * bm
        e = -1
        if s < num_padded:
            lo, hi = 0, E - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if ends[mid] > s:
                    hi = mid
                else:
                    lo = mid + 1
            e = lo
        block_expert[t] = e
    if bm > 1:
        pad = bm - 1
        for i in range(E * pad):
            e, j = i // pad, i % pad
            s = start[e] + total[e] + j
            if s < ends[e]:
                assert s not in written, "padding slot overlaps a pair"
                written.add(s)
                sorted_ids[s] = P
    for s in range(num_padded, max_padded):
        assert s not in written
        written.add(s)
        sorted_ids[s] = P
    assert len(written) == max_padded, "some slot never written"
    return sorted_ids, block_expert, [num_padded]


def check(ids, E, bm):
    t = torch.tensor(ids, dtype=torch.int32)
    ref = reference.moe_align(t, E, bm)
    got = emulate(ids, E, bm)
    for name, r, g in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), ref, got):
        assert r.tolist() == g, f"{name} differs (P={len(ids)} E={E} block_m={bm})"


def main():
    rnd = random.Random(0)
    cases = 0
    for P in (4096, 4097, 5000, 8191, 20000, 131072 + 77):
        for E in (1, 8, 128, 1024):
            for bm in (1, 16, 64, 128):
                if P > 30000 and (E, bm) not in ((128, 1), (128, 128)):
                    continue
                for routing in ("random", "skewed", "invalid", "one"):
                    if routing == "random":
                        ids = [rnd.randrange(E) for _ in range(P)]
                    elif routing == "skewed":
                        ids = [0 if rnd.random() < 0.7 else rnd.randrange(E) for _ in range(P)]
                    elif routing == "invalid":
                        ids = [rnd.randrange(-2, E + 2) for _ in range(P)]
                    else:
                        ids = [E - 1] * P
                    check(ids, E, bm)
                    cases += 1
    print(f"ok: {cases} cases match reference.moe_align")


if __name__ == "__main__":
    main()
