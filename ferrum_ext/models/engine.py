"""CausalLM: a decoder network + its paged KV cache + one `step()` that runs any
mix of prefill chunks and decode tokens, dispatched by the runtime env
(DESIGN.md section 3). `generate()` (ferrum_ext.generate) schedules the steps.
"""

from __future__ import annotations

import sys

import torch

from ferrum_ext.kv_cache import KVCache
from ferrum_ext.models import _kernels as K
from ferrum_ext.models import cuda_graphs
from ferrum_ext.models.layers import Profiler, StepContext, set_context


class CausalLM:
    def __init__(self, net, cfg, env, *, dtype, device, block_size: int = 16, max_blocks: int | None = None):
        self.net, self.config, self.env = net, cfg, env
        self.dtype, self.device = dtype, torch.device(device)
        self.log = K.PathLog()
        self.fa2 = env.fa2_direct_ffi or env.fa2_source
        if self.fa2:
            try:
                import flash_attn  # noqa: F401
            except ImportError as exc:
                raise RuntimeError(
                    "FERRUM_FA2_DIRECT_FFI / FERRUM_FA2_SOURCE ask for FlashAttention-2, but `flash_attn` is "
                    "not importable: pip install flash-attn, or unset those variables") from exc
            block_size = 256  # flash_attn's paged KV needs blocks of a multiple of 256
        self.cache = KVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, dtype, self.device,
                             env, cfg.max_position_embeddings, block_size,
                             shadow_nhd=env.fa_layout_varlen or self.fa2, max_blocks=max_blocks)
        self.scratch_tokens = env.initial_scratch_tokens
        self.graphs = cuda_graphs.make(self)  # FERRUM_MOE_GRAPH: None when off or unavailable (warned)
        self._next_seq = 0
        self._mixed_steps = 0

    # ---- sequences -------------------------------------------------------------------

    def new_sequence(self, prompt: list[int], use_prefix: bool = True) -> tuple[int, int]:
        """(sequence id, number of prompt tokens already in the cache)."""
        seq_id, self._next_seq = self._next_seq, self._next_seq + 1
        cached = self.cache.add(seq_id, prompt, use_prefix)
        self.log.counts["kv:paged" if self.cache.paged else "kv:contiguous"] += 1
        if cached:
            self.log.counts["prefix_cache:hit_tokens"] += cached
        return seq_id, cached

    def free(self, seq_id: int) -> None:
        self.cache.free(seq_id)

    # ---- one step ----------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, items: list[tuple[int, list[int]]], sample: list[bool], kind: str,
             all_logits: bool = False, all_hidden: bool = False):
        """Runs new tokens for each (seq_id, tokens) after what the cache holds.

        Returns next-token ids (int64, host) for the sequences with sample=True,
        or with all_logits the fp32 logits (all_hidden: final-norm hidden states) of every packed token.
        """
        m = sum(len(toks) for _, toks in items)
        if m > self.scratch_tokens:
            raise ValueError(f"a step of {m} tokens exceeds the scratch of {self.scratch_tokens} tokens "
                             f"(FERRUM_MAX_BATCHED_TOKENS)")
        cache, env, dev = self.cache, self.env, self.device
        for seq_id, toks in items:
            cache.reserve(seq_id, cache.num_cached(seq_id) + len(toks))
        ids, pos, slots, lens, cu = [], [], [], [], [0]
        for seq_id, toks in items:
            start = cache.num_cached(seq_id)
            ids += toks
            pos += range(start, start + len(toks))
            slots += cache.slot_mapping(seq_id, start, start + len(toks))
            lens.append(start + len(toks))
            cu.append(cu[-1] + len(toks))
        max_q = max(len(toks) for _, toks in items)
        decode = kind == "decode" and max_q == 1
        if self.graphs is not None and decode and all(sample) and not (all_logits or all_hidden):
            next_ids = self.graphs.run(ids, pos, slots, lens, [s for s, _ in items])
            for seq_id, toks in items:
                cache.commit(seq_id, toks)
            return next_ids
        mode = "fa2" if self.fa2 else "decode" if decode and not env.vllm_decode_varlen else "varlen"
        ctx = StepContext(
            mode=mode, kind=kind,
            positions=torch.tensor(pos, dtype=torch.int64, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            block_tables=cache.block_tables([s for s, _ in items], dev),
            max_seq_len=max(lens), max_q_len=max_q, cache=cache, env=env, log=self.log,
            tiled_q4=env.vllm_varlen_tiled_q4 and max_q > 1,
            read_shadow=kind == "mixed" and env.fa_layout_varlen,
            profile_moe=env.moe_profile, prof=Profiler())
        ctx.profile_ops = (decode and env.decode_op_profile) or self._layer_prof(kind, m, len(items))
        if kind == "mixed" and env.qwen_unified_trace:
            n_dec = sum(len(t) == 1 for _, t in items)
            print(f"[ferrum unified_trace] step={self._mixed_steps} seqs={len(items)} tokens={m} "
                  f"prefill_seqs={len(items) - n_dec} decode_seqs={n_dec}", file=sys.stderr)
        set_context(ctx)
        try:
            with ctx.timed("step", decode and env.rbd_prof, dev):
                hidden = self.net(torch.tensor(ids, dtype=torch.int64, device=dev))
                for (seq_id, toks) in items:
                    cache.commit(seq_id, toks)
                if all_hidden:
                    return hidden
                if all_logits:
                    return self.net.compute_logits(hidden)
                rows = [cu[i + 1] - 1 for i, s in enumerate(sample) if s]
                if not rows:
                    return torch.empty(0, dtype=torch.int64)
                logits = self.net.compute_logits(hidden[torch.tensor(rows, device=dev)])
                if (env.greedy_argmax if decode else env.unified_greedy_argmax):
                    self.log.add("sample", f"{kind}:greedy_argmax", logits, kernel="greedy_argmax")
                    return K.greedy_argmax(logits).cpu()
                self.log.add("sample", f"{kind}:logits_to_host", logits, kernel="torch.argmax")
                return logits.cpu().argmax(-1)
        finally:
            set_context(None)
            if kind == "mixed":
                self._mixed_steps += 1
            self._report(ctx, decode, m, len(items))

    def _layer_prof(self, kind, m, num_seqs) -> bool:
        env = self.env
        return (kind == "mixed" and env.unified_layer_prof_selected(m, num_seqs)
                and self._mixed_steps % env.unified_layer_prof_every == 0)

    def _report(self, ctx: StepContext, decode: bool, m: int, num_seqs: int) -> None:
        times = ctx.prof.times
        if not times:
            return
        head = f"{ctx.kind} step: {num_seqs} seqs, {m} tokens"
        if "step" in times:
            print(f"[ferrum rbd_prof] {head}: {times['step']:.3f} ms", file=sys.stderr)
        moe = {k: v for k, v in times.items() if k.startswith("moe.")}
        if moe:
            print(f"[ferrum moe_profile] {head}: " + " ".join(f"{k}={v:.3f}ms" for k, v in moe.items()),
                  file=sys.stderr)
        layers = {k: v for k, v in times.items() if k.startswith("L")}
        if layers and decode and self.env.decode_op_profile:
            attn = sum(v for k, v in layers.items() if k.endswith(".attn"))
            mlp = sum(v for k, v in layers.items() if k.endswith(".mlp"))
            print(f"[ferrum decode_op_profile] {head}: attn={attn:.3f}ms mlp={mlp:.3f}ms", file=sys.stderr)
        elif layers:
            print(f"[ferrum unified_layer_prof] {head}: " + " ".join(f"{k}={v:.3f}ms" for k, v in layers.items()),
                  file=sys.stderr)

    # ---- public API ----------------------------------------------------------------------

    def logits(self, input_ids) -> torch.Tensor:
        """fp32 logits [T, vocab] of every position of one prompt (chunked by the scratch size)."""
        return self._all_positions(input_ids, hidden=False)

    def last_hidden_state(self, input_ids) -> torch.Tensor:
        """Final-norm hidden states [T, hidden] (model dtype) of one prompt."""
        return self._all_positions(input_ids, hidden=True)

    def _all_positions(self, input_ids, hidden: bool) -> torch.Tensor:
        if torch.is_tensor(input_ids):
            input_ids = input_ids.tolist()
        if not input_ids or not all(isinstance(t, int) for t in input_ids):
            raise ValueError("logits() takes one non-empty prompt: a 1-D list or tensor of token ids")
        ids = list(input_ids)
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise ValueError(f"token id outside [0, {self.config.vocab_size})")
        if len(ids) > self.cache.capacity:
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the KV capacity {self.cache.capacity} "
                             f"(FERRUM_KV_CAPACITY / max_position_embeddings)")
        seq_id, _ = self.new_sequence(ids, use_prefix=False)
        try:
            out = []
            for i in range(0, len(ids), self.scratch_tokens):
                out.append(self.step([(seq_id, ids[i:i + self.scratch_tokens])], [False], "prefill",
                                     all_logits=not hidden, all_hidden=hidden))
            return torch.cat(out)
        finally:
            self.free(seq_id)

    def generate(self, prompts, max_new_tokens: int, eos_token_id=None, callback=None) -> list[list[int]]:
        from ferrum_ext.generate import generate
        return generate(self, prompts, max_new_tokens, eos_token_id, callback=callback)
