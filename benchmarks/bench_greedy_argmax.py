"""greedy_argmax over logits rows vs torch.argmax.

Bytes that must move: B * V * e (the logits, read once; the B ids written are negligible),
e = element size; rates compare with the read ceiling. Baseline: torch.argmax(logits, -1),
timed in the same run on the same rotated inputs. Targets (DESIGN.md section 5, H100):
B=1 V=151936 fp32 <= 8 us; B=256 fp32 >= 2.7 TB/s; >= 1.5x torch.argmax everywhere.

    python -m benchmarks.run --only greedy_argmax
"""

import torch

from ferrum_ext import ops

VOCAB = 151936  # Qwen2/Qwen3
BATCHES = (1, 8, 64, 256)
ROTATE = 4  # input sets cycled so a run never finds its logits in L2


def run(ctx):
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        e = torch.finfo(dtype).bits // 8
        for batch in BATCHES:
            sets = [(torch.randn(batch, VOCAB, device="cuda", dtype=dtype),
                     torch.empty(batch, dtype=torch.int64, device="cuda")) for _ in range(ROTATE)]
            for logits, out in sets:  # the contract, checked on the benchmarked inputs
                if not torch.equal(ops.greedy_argmax(logits, out=out), torch.argmax(logits, -1)):
                    raise AssertionError(f"greedy_argmax differs from torch.argmax at B={batch} {dtype}")
            t = ctx.time(lambda x, o: ops.greedy_argmax(x, out=o), sets)
            base = ctx.time(lambda x, o: torch.argmax(x, -1), sets)
            rows.append(ctx.row("greedy_argmax", f"B={batch} V={VOCAB}", dtype, t,
                                bytes_moved=batch * VOCAB * e, baseline=base, baseline_name="torch.argmax"))
            del sets
    return rows
