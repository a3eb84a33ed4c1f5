"""Greedy batched generation over a CausalLM (ferrum_ext.models.engine).

Sequences finish independently (EOS or max_new_tokens); waiting prompts are
admitted as soon as a sequence slot and enough KV blocks for their whole run
(prompt + new tokens) are free, so a running sequence never runs out of
blocks. Step shapes follow the env (DESIGN.md section 3):
- qwen_unified_prefill (on): prefill chunks and decodes share one "mixed" step;
  off: prefills one by one, then a decode batch;
- moe_batched_enabled and m >= moe_batch_threshold: the m decodes run as one
  batched step, else one step per sequence;
- every step holds at most initial_scratch_tokens tokens (prefills are chunked).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ferrum_ext.kv_cache import KVCacheExhausted


@dataclass
class _Running:
    index: int
    seq_id: int
    tokens: list[int]  # prompt + generated
    cached: int  # tokens with K/V in the cache
    final_len: int  # tokens the cache must hold at the end
    out: list[int] = field(default_factory=list)


def _check_prompts(model, prompts, max_new_tokens) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
        raise TypeError("prompts must be a list of lists of token ids")
    vocab, cap = model.config.vocab_size, model.cache.capacity
    checked = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in (p.tolist() if hasattr(p, "tolist") else p)]
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if min(p) < 0 or max(p) >= vocab:
            raise ValueError(f"prompt {i} has a token id outside [0, {vocab})")
        if len(p) + max_new_tokens - 1 > cap:
            raise ValueError(f"prompt {i} ({len(p)} tokens) + {max_new_tokens} new tokens exceeds the KV "
                             f"capacity of {cap} tokens per sequence (FERRUM_KV_CAPACITY)")
        checked.append(p)
    return checked


def generate(model, prompts, max_new_tokens: int, eos_token_id=None,
             callback: Callable[[int, int], None] | None = None) -> list[list[int]]:
    """Greedy continuation of each prompt: new token ids only; callback(prompt index, token)."""
    prompts = _check_prompts(model, prompts, max_new_tokens)
    outputs: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return outputs
    eos = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    cache, env = model.cache, model.env
    waiting, running = deque(range(len(prompts))), []
    try:
        while waiting or running:
            _admit(model, prompts, max_new_tokens, waiting, running)
            for batch, kind in _plan_steps(running, env, model.scratch_tokens):
                items = [(r.seq_id, r.tokens[r.cached:r.cached + n]) for r, n in batch]
                sample = [r.cached + n == len(r.tokens) for r, n in batch]
                next_ids = model.step(items, sample, kind).tolist()
                for r, n in batch:
                    r.cached += n
                for r in (r for (r, _), s in zip(batch, sample) if s):
                    token = next_ids.pop(0)
                    r.tokens.append(token)
                    r.out.append(token)
                    if callback is not None:
                        callback(r.index, token)
            for r in list(running):
                if len(r.out) >= max_new_tokens or (r.out and r.out[-1] in eos):
                    outputs[r.index] = r.out
                    running.remove(r)
                    cache.free(r.seq_id)
    finally:
        for r in running:
            cache.free(r.seq_id)
    return outputs


def _admit(model, prompts, max_new_tokens, waiting, running) -> None:
    cache = model.cache
    reserved = sum(max(0, cache.blocks_for(r.final_len) - len(cache.seqs[r.seq_id].blocks)) for r in running)
    while waiting and len(running) < cache.max_seqs:
        prompt = prompts[waiting[0]]
        final_len = len(prompt) + max_new_tokens - 1
        if not cache.can_admit(final_len, reserved):
            if not running:
                raise KVCacheExhausted(
                    f"prompt {waiting[0]} needs {cache.blocks_for(final_len)} KV blocks, the pool has "
                    f"{cache.allocator.num_free} free (raise FERRUM_KV_MAX_BLOCKS)")
            return
        index = waiting.popleft()
        seq_id, cached = model.new_sequence(prompt)
        running.append(_Running(index, seq_id, list(prompt), cached, final_len))
        reserved += cache.blocks_for(final_len) - len(cache.seqs[seq_id].blocks)


def _plan_steps(running, env, budget):
    """[(batch of (running, n new tokens), kind)] for one scheduler round."""
    decodes = [(r, 1) for r in running if len(r.tokens) - r.cached == 1 and r.out]
    prefills = [r for r in running if not r.out]
    if env.qwen_unified_prefill:
        batch, left = list(decodes[:budget]), budget - min(len(decodes), budget)
        for r in prefills:
            n = min(len(r.tokens) - r.cached, left)
            if n > 0:
                batch.append((r, n))
                left -= n
        kind = "mixed" if decodes and len(batch) > len(decodes) else "decode" if decodes else "prefill"
        if kind != "decode":
            return [(batch, kind)]
        prefills = []
    steps = []
    for r in prefills:  # one by one, chunked by the scratch size
        n = min(len(r.tokens) - r.cached, budget)
        steps.append(([(r, n)], "prefill"))
    if prefills:
        return steps  # their next chunks / decodes come in the next round
    if env.moe_batched_enabled and len(decodes) >= env.moe_batch_threshold:
        return [(decodes[i:i + budget], "decode") for i in range(0, len(decodes), budget)]
    return [([d], "decode") for d in decodes]
