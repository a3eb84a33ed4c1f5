"""Pure-Python mirror of the index math of csrc/attention/paged_decode.cuh (decode v2) for one CTA:
per-thread block ids, cp.async sources and shared-memory units, the xor swizzle, the ldmatrix
rows of S and P V. Checks that every shared-memory unit of every stage holds the expected
(block, kv head, token, chunk) or dim/8-token group, that each unit is written once, and that
the cp.async quarter-warps and the ldmatrix rows are free of bank conflicts, for every
head_dim x layout x block_size and ranges that start and end mid-block.

    python scripts/emulate_decode_v2.py        (CPU, ~10 s; prints "ok N cases")

Kept by hand in step with the kernel: change both together.
"""
import itertools
import random
import sys

T_THREADS = 128

def cfg(D):
    WT = 1 if D >= 256 else 2
    WD = 4 // WT
    ST = 16 * WT
    CH = D // 8
    c = {"WT": WT, "WD": WD, "ST": ST, "CH": CH, "KS": D // 16, "DW": D // WD, "DNW": D // WD // 8,
         "kStages": 6 if D <= 64 else (4 if D <= 96 else 3), "kStageBytes": ST * D * 2,
         "KU": CH * ST // 128, "G": ST // 8, "VU": D * (ST // 8) // 128}
    rs = 128 // CH
    c['RS'] = 16 if rs >= 16 else (8 if rs >= 8 else 4)
    c['TPT'] = ST // c['RS']
    c['kLoaders'] = c['RS'] * CH
    assert c['KU'] * 128 == CH * ST and c['VU'] * 128 == D * c['G']
    assert c['TPT'] * c['RS'] == ST
    return c

def run(D, vllm, bs, kvh_total, kvh, bt, kv_begin, range_end):
    C = cfg(D); ST, CH = C['ST'], C['CH']
    lbs = bs.bit_length() - 1
    n_tok = max(range_end - kv_begin, 0); n_stages = (n_tok + ST - 1) // ST
    if vllm:
        k_block_stride = kvh_total * D * bs; v_block_stride = kvh_total * D * bs
    else:
        k_block_stride = v_block_stride = bs * kvh_total * D
    kbs, vbs = k_block_stride * 2, v_block_stride * 2
    def decode_k(off):  # byte offset -> content label
        e, r = divmod(off, 2); assert r == 0
        blk, rem = divmod(e, k_block_stride)
        if vllm:
            head, rem = divmod(rem, D * bs); c, rem = divmod(rem, bs * 8); t, x = divmod(rem, 8); assert x == 0
            return (blk, head, t, c)
        t, rem = divmod(rem, kvh_total * D); head, d = divmod(rem, D); assert d % 8 == 0
        return (blk, head, t, d // 8)
    def decode_v(off):
        e, r = divmod(off, 2); assert r == 0
        blk, rem = divmod(e, v_block_stride)
        if vllm:
            head, rem = divmod(rem, D * bs); d, t = divmod(rem, bs); assert t % 8 == 0
            return (blk, head, d, t)  # 8 tokens t..t+7 of dim d
        t, rem = divmod(rem, kvh_total * D); head, d = divmod(rem, D); assert d % 8 == 0
        return (blk, head, t, d // 8)
    errors = []
    for s in range(n_stages):
        smemK, smemV = {}, {}
        stage_base = kv_begin + s * ST
        valid = range_end - stage_base
        warp_instrs = {}
        for tid in range(T_THREADS):
            # ---- per-thread geometry (mirror of the C++) ----
            loader = True
            if vllm:
                head = kvh * D * bs * 2
                tokK = tid % ST; c0 = tid // ST
                koff = head + (c0 * bs + (tokK & (bs - 1))) * 16
                kstep = (128 // ST) * bs * 16
                g = (tid >> 3) % C['G']; d0 = ((tid >> 3) // C['G']) * 8 + (tid & 7)
                tokV = g * 8
                voff = head + (d0 * bs + (tokV & (bs - 1))) * 2
                vstep = (8 * 128 // ST) * bs * 2
                ktok, vtok = 16, 2
                sv_off = (g * D + d0) * 16
            else:
                c = tid % CH; r = tid // CH
                loader = tid < C['kLoaders']
                tokK = tokV = r * C['TPT'] if loader else 0
                tok_stride = kvh_total * D * 2
                koff = voff = (tokK & (bs - 1)) * tok_stride + kvh * D * 2 + c * 16
                kstep = vstep = tok_stride; ktok = vtok = tok_stride
            def load_bid(tok, stage_base=stage_base):
                t = stage_base + tok
                return bt[t >> lbs] if t < range_end else 0
            bidK, bidV = load_bid(tokK), (load_bid(tokV) if vllm else load_bid(tokK))
            gk = bidK * kbs + koff; gv = bidV * vbs + voff
            if ST < 32:
                sb = stage_base & (bs - 1); gk += sb * ktok; gv += sb * vtok
            ops = []  # (which, smem unit, global off, valid)
            if vllm:
                for i in range(C['KU']):
                    c = c0 + i * (128 // ST)
                    ops.append(('K', c * ST + (tokK ^ (c & 7)), gk + i * kstep, tokK < valid, i))
                for i in range(C['VU']):
                    ops.append(('V', sv_off // 16 + i * (8 * 128 // ST), gv + i * vstep, tokV < valid, i))
            elif loader:
                c = tid % CH
                for j in range(C['TPT']):
                    t = tokK + j
                    so = c * ST + (t ^ (c & 7))
                    ops.append(('K', so, gk + j * kstep, t < valid, j))
                    ops.append(('V', so, gv + j * vstep, t < valid, 100 + j))
            for which, unit, goff, ok, idx in ops:
                store = smemK if which == 'K' else smemV
                if unit in store:
                    errors.append(f"s{s} tid{tid}: {which} unit {unit} written twice")
                lab = (decode_k(goff) if which == 'K' else decode_v(goff)) if ok else None
                store[unit] = lab
                warp_instrs.setdefault((which, tid // 32, idx), []).append((tid % 32, unit))
        # ---- coverage + content ----
        nunits = ST * D // 8
        for which, store in (('K', smemK), ('V', smemV)):
            if sorted(store) != list(range(nunits)):
                errors.append(f"s{s} {which}: units written {len(store)} of {nunits}, range ok={set(store) <= set(range(nunits))}")
        for t in range(ST):
            a = stage_base + t
            for c in range(CH):
                u = c * ST + (t ^ (c & 7))
                exp = (bt[a >> lbs], kvh, a & (bs - 1), c) if t < valid else None
                if smemK.get(u, 'missing') != exp:
                    errors.append(f"s{s} K t{t} c{c}: unit {u} holds {smemK.get(u, 'missing')}, expected {exp}")
                if not vllm and smemV.get(u, 'missing') != exp:
                    errors.append(f"s{s} V t{t} c{c}: unit {u} holds {smemV.get(u, 'missing')}, expected {exp}")
        if vllm:
            for g in range(C['G']):
                a = stage_base + 8 * g
                for d in range(D):
                    u = g * D + d
                    exp = (bt[a >> lbs], kvh, d, a & (bs - 1)) if 8 * g < valid else None
                    if smemV.get(u, 'missing') != exp:
                        errors.append(f"s{s} V g{g} d{d}: unit {u} holds {smemV.get(u)}, expected {exp}")
        # ---- smem bank conflicts of the cp.async writes (per quarter warp) ----
        for key, lst in warp_instrs.items():
            lst.sort()
            for qw in range(4):
                quads = [u % 8 for lane, u in lst if lane // 8 == qw]
                if len(quads) != len(set(quads)):
                    errors.append(f"s{s} conflict in {key} quarter {qw}: {quads}")
                    break
    # ---- ldmatrix rows of the math (S: K; P V: V), for every warp/lane/k-step ----
    for warp in range(4):
        tw, dh = warp % C['WT'], warp // C['WT']
        cv0 = dh * (C['DW'] // 8)
        lanes_units = {}
        for lane in range(32):
            mi, li = lane >> 3, lane & 7
            tS = tw * 16 + (mi >> 1) * 8 + li
            tP = tw * 16 + (mi & 1) * 8 + li
            for kk in range(C['KS']):
                c = 2 * kk + (mi & 1)
                u = c * ST + (tS ^ (c & 7))
                # expected: matrix mi row li = token tw*16 + (mi>>1)*8 + li, chunk 2kk + (mi&1)
                lanes_units.setdefault(('S', kk, mi), []).append(u)
                assert u == c * ST + (tS ^ (c & 7))
            for dp in range(C['DNW'] // 2):
                if vllm:
                    d = cv0 * 8 + dp * 16 + (mi >> 1) * 8 + li; g = tw * 2 + (mi & 1)
                    u = g * D + d
                    # B operand: matrix rows = dims (n), 8 tokens (k) of group g
                    assert d < D and g < C['G'], (d, g)
                else:
                    c = cv0 + 2 * dp + (mi >> 1)
                    u = c * ST + (tP ^ (c & 7))
                    assert c < CH
                lanes_units.setdefault(('PV', dp, mi), []).append(u)
        for key, us in lanes_units.items():
            if len({x % 8 for x in us}) != 8:
                errors.append(f"ldmatrix conflict {key} warp {warp}: {[x % 8 for x in us]}")
    return errors

def main():
    rnd = random.Random(0)
    total = 0
    for D, vllm, bs in itertools.product((64, 96, 128, 256), (True, False), (8, 16, 32)):
        kvh_total = 3
        nblk = 70
        bt = list(range(nblk)); rnd.shuffle(bt)
        for kvh in (0, 2):
            for kv_begin, range_end in ((0, 1), (0, 37), (48, 101), (16, 17), (32, 300), (64, 64 + 96), (0, 7)):
                if range_end > nblk * bs:
                    continue
                ST = cfg(D)['ST']
                if kv_begin % ST:
                    continue
                errs = run(D, vllm, bs, kvh_total, kvh, bt, kv_begin, range_end)
                total += 1
                if errs:
                    print(f"D{D} vllm={vllm} bs{bs} kvh{kvh} [{kv_begin},{range_end}): {len(errs)} errors")
                    for e in errs[:8]:
                        print("   ", e)
                    sys.exit(1)
    print("ok", total, "cases")

if __name__ == "__main__":
    main()
