"""CUDA-graph decode (FERRUM_MOE_GRAPH=1 with FERRUM_VLLM_MOE=1, DESIGN.md section 3).

A decode step (one token per sequence) of batch size B replays a graph
captured lazily the first time B is seen; graphs share one memory pool. Each
graph owns static device buffers (token ids, positions, slot mapping,
seq_lens, block tables of the cache's full width); a step copies its metadata
into them, replays, and reads the token ids (greedy_argmax) or the logits.
Attention is captured with max_seq_len = the cache capacity per sequence, a
host upper bound, so the split-K launch stays valid as seq_lens grow.

Python side effects of the forward (the path log) happen once, at capture;
their counts are replayed into the model's log on each replay, together with
"decode:cuda_graph[bs=B]" ("decode:cuda_graph_capture[bs=B]" once per capture).
Graphs share a pool, so one graph's intermediates may overlap another's output:
each replay's output is copied to the host before any other replay.
"""

from __future__ import annotations

import torch

from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.models import _kernels as K
from ferrum_ext.models.layers import Profiler, StepContext, set_context

_PROFILING = (("decode_op_profile", "FERRUM_DECODE_OP_PROFILE"), ("moe_profile", "FERRUM_MOE_PROFILE"),
              ("rbd_prof", "FERRUM_RBD_PROF"))


def unavailable_reason(env, device: torch.device, dtype: torch.dtype, fa2: bool, net) -> str | None:
    """Why graph decode cannot run for this model (None: it can). Only asked when requested."""
    from ferrum_ext.models.qwen3_moe import SparseMoeBlock

    if not env.moe_graph_vllm_clean:
        return "not clean (needs FERRUM_VLLM_MOE=1 and not FERRUM_MOE_HOST_ROUTE=1)"
    if device.type != "cuda":
        return f"only for CUDA models (this one is on {device.type})"
    if not cuda_ops_available():
        return "only with the compiled extension (ferrum_ext._C is not built)"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"only for float16/bfloat16 models (the {dtype} path runs reference ops that sync)"
    if fa2:
        return "not available with FERRUM_FA2_DIRECT_FFI / FERRUM_FA2_SOURCE"
    if not env.moe_bucketed and any(isinstance(m, SparseMoeBlock) for m in net.modules()):
        return "not available with FERRUM_MOE_BUCKETED=0 (the per-pair MoE loop syncs with the host)"
    on = [var for field, var in _PROFILING if getattr(env, field)]
    if on:
        return f"off while profiling ({', '.join(on)} time decode steps eagerly)"
    return None


class _Graph:
    """Static buffers + the captured step of one batch size."""

    def __init__(self, b: int, width: int, device):
        i64, i32 = {"dtype": torch.int64, "device": device}, {"dtype": torch.int32, "device": device}
        self.b = b
        # Dummy contents for warm-up and capture: slot -1 writes no KV, a context of 1 reads block 0.
        self.ids = torch.zeros(b, **i64)
        self.positions = torch.zeros(b, **i64)
        self.slots = torch.full((b,), -1, **i64)
        self.seq_lens = torch.ones(b, **i32)
        self.block_tables = torch.zeros((b, width), **i32)
        self.cu_seqlens_q = torch.arange(b + 1, **i32)  # read in varlen mode (FERRUM_VLLM_DECODE_VARLEN) only
        self.log = K.PathLog()
        self.graph = None
        self.out = None


class DecodeGraphs:
    """Runs decode steps through per-batch-size CUDA graphs. capture=False replays by rerunning the
    forward on the static buffers (no graph): the same code path, testable on CPU."""

    def __init__(self, model, capture: bool = True):
        self.model, self.capture = model, capture
        self.graphs: dict[int, _Graph] = {}
        self.pool = None

    def _forward(self, g: _Graph) -> torch.Tensor:
        m = self.model
        env, cache = m.env, m.cache
        ctx = StepContext(
            mode="varlen" if env.vllm_decode_varlen else "decode", kind="decode",
            positions=g.positions, slot_mapping=g.slots,
            cu_seqlens_q=g.cu_seqlens_q, seq_lens=g.seq_lens, block_tables=g.block_tables,
            max_seq_len=cache.capacity, max_q_len=1, cache=cache, env=env, log=g.log, prof=Profiler())
        set_context(ctx)
        try:
            logits = m.net.compute_logits(m.net(g.ids))
            if env.greedy_argmax:
                g.log.add("sample", "decode:greedy_argmax", logits, kernel="greedy_argmax")
                return K.greedy_argmax(logits)
            g.log.add("sample", "decode:logits_to_host", logits, kernel="torch.argmax")
            return logits
        finally:
            set_context(None)

    def _build(self, b: int) -> _Graph:
        m = self.model
        g = _Graph(b, m.cache.max_blocks_per_seq, m.device)
        if self.capture:
            with torch.cuda.device(m.device):
                self._capture(g)
            m.log.counts[f"decode:cuda_graph_capture[bs={b}]"] += 1
        return g

    def _capture(self, g: _Graph) -> None:
        m = self.model
        side = torch.cuda.Stream(device=m.device)
        side.wait_stream(torch.cuda.current_stream(m.device))
        with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS plans, allocator growth
            self._forward(g)
        torch.cuda.current_stream(m.device).wait_stream(side)
        g.log.clear()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            g.out = self._forward(g)
        g.graph = graph

    def run(self, ids: list[int], positions: list[int], slots: list[int], seq_lens: list[int],
            seq_ids: list[int]) -> torch.Tensor:
        """Next-token ids (int64, host) of a decode step whose K/V slots are already reserved."""
        b = len(ids)
        g = self.graphs.get(b)
        if g is None:
            g = self.graphs[b] = self._build(b)
        cache = self.model.cache
        width = g.block_tables.shape[1]
        tables = []
        for s in seq_ids:
            blocks = cache.seqs[s].blocks
            tables.append(blocks + [0] * (width - len(blocks)))
        g.ids.copy_(torch.tensor(ids, dtype=torch.int64))
        g.positions.copy_(torch.tensor(positions, dtype=torch.int64))
        g.slots.copy_(torch.tensor(slots, dtype=torch.int64))
        g.seq_lens.copy_(torch.tensor(seq_lens, dtype=torch.int32))
        g.block_tables.copy_(torch.tensor(tables, dtype=torch.int32))
        if g.graph is not None:
            g.graph.replay()
            out = g.out
        else:
            g.log.clear()
            out = self._forward(g)
        log = self.model.log.counts
        log[f"decode:cuda_graph[bs={b}]"] += 1
        log.update(g.log.counts)
        return out.cpu() if self.model.env.greedy_argmax else out.cpu().argmax(-1)


def make(model) -> DecodeGraphs | None:
    """The runner when FERRUM_MOE_GRAPH=1 can be honoured; else None, with one warning when requested."""
    env = model.env
    if not env.moe_graph_requested:
        return None
    why = unavailable_reason(env, model.device, model.dtype, model.fa2, model.net)
    if why is None:
        return DecodeGraphs(model)
    import warnings

    warnings.warn(f"FERRUM_MOE_GRAPH=1: CUDA-graph decode is {why}; decode steps run eagerly", stacklevel=4)
    return None
