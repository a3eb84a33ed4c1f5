"""Paged KV cache: a pool per layer, a block allocator, block tables, slot mappings.

Layouts (DESIGN.md section 2): "vllm" key [blocks, kvh, D//x, bs, x], value
[blocks, kvh, D, bs]; "nhd" key and value [blocks, bs, kvh, D]. Sizing:
`kv_capacity(model max)` tokens per sequence, `paged_max_seqs` sequences,
`FERRUM_KV_MAX_BLOCKS` (when set) caps the pool. With prefix caching, every
full block of a sequence is keyed by a hash chain over the tokens up to its
end; a fresh sequence whose prompt starts with the same blocks reuses them.
Freed cached blocks stay findable until the allocator hands them out again.
With paged KV off (FERRUM_METAL_PAGED_KV=0) each sequence owns a fixed,
contiguous run of blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv, active_runtime_snapshot, parse_rust_u64


class KVCacheExhausted(RuntimeError):
    """Not enough free KV blocks; nothing was allocated."""


def kv_max_blocks_from_env() -> int | None:
    entry = active_runtime_snapshot().get("FERRUM_KV_MAX_BLOCKS")
    value = None if entry is None else parse_rust_u64(entry.effective_value)
    return value if value else None


class BlockAllocator:
    """Free list + refcounts + (optional) hash -> block map for prefix caching."""

    def __init__(self, num_blocks: int):
        self.num_blocks = num_blocks
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self.ref = [0] * num_blocks
        self.hash_of: dict[int, int] = {}
        self.block_of: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        return len(self.free)

    def allocate(self, n: int, what: str = "") -> list[int]:
        if n > len(self.free):
            raise KVCacheExhausted(
                f"KV cache out of blocks{what}: need {n}, {len(self.free)} free of {self.num_blocks} "
                f"(raise FERRUM_KV_MAX_BLOCKS / FERRUM_PAGED_MAX_SEQS or lower the batch)")
        blocks = []
        for _ in range(n):
            block, _ = self.free.popitem(last=False)
            h = self.hash_of.pop(block, None)
            if h is not None:
                del self.block_of[h]
            self.ref[block] = 1
            blocks.append(block)
        return blocks

    def acquire(self, block: int) -> None:
        if self.ref[block] == 0:
            del self.free[block]
        self.ref[block] += 1

    def release(self, blocks: list[int]) -> None:
        for block in blocks:
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None  # cached blocks go to the back: evicted last

    def register(self, block: int, h: int) -> None:
        if h not in self.block_of and block not in self.hash_of:
            self.block_of[h], self.hash_of[block] = block, h


@dataclass
class _Seq:
    blocks: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # tokens whose K/V are in the cache
    hashes: list[int] = field(default_factory=list)  # hash chain of the full blocks
    slot: int = -1  # contiguous mode: which fixed run of blocks


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device,
                 env: Qwen3MoeRuntimeEnv, model_max: int, block_size: int = 16, shadow_nhd: bool = False,
                 max_blocks: int | None = None):
        self.block_size = block_size
        self.layout = "vllm" if env.use_vllm_paged_attn else "nhd"
        self.paged = env.metal_paged_kv_enabled(True)
        self.prefix_cache = env.prefix_cache and self.paged
        self.capacity = env.kv_capacity(model_max)
        self.max_blocks_per_seq = -(-self.capacity // block_size)
        self.max_seqs = env.paged_max_seqs
        num_blocks = self.max_seqs * self.max_blocks_per_seq
        max_blocks = max_blocks if max_blocks is not None else kv_max_blocks_from_env()
        if max_blocks is not None:
            num_blocks = max_blocks if self.paged else min(num_blocks, max_blocks)
            self.max_seqs = self.max_seqs if self.paged else max(1, num_blocks // self.max_blocks_per_seq)
        self.num_blocks = num_blocks
        self.allocator = BlockAllocator(num_blocks)
        self.free_slots = list(range(self.max_seqs))[::-1]
        kw = dict(dtype=dtype, device=device)
        if self.layout == "vllm":
            x = 16 // torch.empty((), dtype=dtype).element_size()
            kshape = (num_blocks, num_kv_heads, head_dim // x, block_size, x)
            vshape = (num_blocks, num_kv_heads, head_dim, block_size)
        else:
            kshape = vshape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.key_caches = [torch.zeros(kshape, **kw) for _ in range(num_layers)]
        self.value_caches = [torch.zeros(vshape, **kw) for _ in range(num_layers)]
        # "nhd" shadow pool written alongside (fa_layout_varlen / FlashAttention-2); same block ids.
        self.shadow = None
        if shadow_nhd and self.layout != "nhd":
            shape = (num_blocks, block_size, num_kv_heads, head_dim)
            self.shadow = ([torch.zeros(shape, **kw) for _ in range(num_layers)],
                           [torch.zeros(shape, **kw) for _ in range(num_layers)])
        self.seqs: dict[int, _Seq] = {}

    # ---- sequences ---------------------------------------------------------------

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def can_admit(self, total_tokens: int, reserved_blocks: int = 0) -> bool:
        if not self.paged:
            return bool(self.free_slots)
        return self.blocks_for(total_tokens) + reserved_blocks <= self.allocator.num_free

    def add(self, seq_id: int, prompt: list[int], use_prefix: bool = True) -> int:
        """Registers a fresh sequence; returns how many prompt tokens are already cached."""
        if seq_id in self.seqs:
            raise ValueError(f"sequence {seq_id} is already in the KV cache")
        seq = _Seq()
        if not self.paged:
            if not self.free_slots:
                raise KVCacheExhausted(f"KV cache has no free sequence slot (all {self.max_seqs} in use)")
            seq.slot = self.free_slots.pop()
            start = seq.slot * self.max_blocks_per_seq
            seq.blocks = list(range(start, start + self.max_blocks_per_seq))
        elif self.prefix_cache and use_prefix:
            h, bs = 0, self.block_size
            for i in range((len(prompt) - 1) // bs):  # keep >= 1 token to compute
                h = hash((h, tuple(prompt[i * bs:(i + 1) * bs])))
                block = self.allocator.block_of.get(h)
                if block is None:
                    break
                self.allocator.acquire(block)
                seq.blocks.append(block)
                seq.hashes.append(h)
            seq.tokens = list(prompt[: len(seq.blocks) * bs])
        self.seqs[seq_id] = seq
        return len(seq.tokens)

    def reserve(self, seq_id: int, total_tokens: int) -> None:
        """Makes room for `total_tokens` tokens of `seq_id`; on failure nothing changes."""
        seq = self.seqs[seq_id]
        if total_tokens > self.capacity:
            raise KVCacheExhausted(f"sequence {seq_id} needs {total_tokens} tokens, over the KV capacity "
                                   f"{self.capacity} per sequence (FERRUM_KV_CAPACITY)")
        need = self.blocks_for(total_tokens) - len(seq.blocks)
        if need > 0:
            seq.blocks += self.allocator.allocate(need, f" for sequence {seq_id}")

    def slot_mapping(self, seq_id: int, start: int, end: int) -> list[int]:
        blocks, bs = self.seqs[seq_id].blocks, self.block_size
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]

    def commit(self, seq_id: int, tokens: list[int]) -> None:
        """`tokens` now have their K/V in the cache; full blocks join the prefix cache."""
        seq = self.seqs[seq_id]
        seq.tokens += tokens
        if not self.prefix_cache:
            return
        bs = self.block_size
        while len(seq.hashes) < len(seq.tokens) // bs:
            i = len(seq.hashes)
            prev = seq.hashes[-1] if seq.hashes else 0
            seq.hashes.append(hash((prev, tuple(seq.tokens[i * bs:(i + 1) * bs]))))
            self.allocator.register(seq.blocks[i], seq.hashes[-1])

    def num_cached(self, seq_id: int) -> int:
        return len(self.seqs[seq_id].tokens)

    def free(self, seq_id: int) -> None:
        seq = self.seqs.pop(seq_id)
        if self.paged:
            self.allocator.release(seq.blocks)
        else:
            self.free_slots.append(seq.slot)

    def block_tables(self, seq_ids: list[int], device) -> torch.Tensor:
        width = max(1, max(len(self.seqs[s].blocks) for s in seq_ids))
        rows = [self.seqs[s].blocks + [0] * (width - len(self.seqs[s].blocks)) for s in seq_ids]
        return torch.tensor(rows, dtype=torch.int32, device=device)
