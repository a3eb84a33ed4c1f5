"""Paged KV cache: allocator, exhaustion, freeing, slot mapping, layouts, sizing, prefix cache."""

import pytest
import torch

from ferrum_ext.kv_cache import BlockAllocator, KVCache, KVCacheExhausted
from ferrum_ext.runtime_env import Qwen3MoeRuntimeEnv


def make(env_vars=None, model_max=64, max_blocks=None, dtype=torch.float16):
    env = Qwen3MoeRuntimeEnv.from_env_vars(env_vars or {})
    return KVCache(2, 2, 16, dtype, "cpu", env, model_max, block_size=4, max_blocks=max_blocks)


def test_sizing_and_layouts():
    cache = make({"FERRUM_PAGED_MAX_SEQS": "3", "FERRUM_KV_CAPACITY": "10"})
    assert cache.capacity == 10 and cache.max_blocks_per_seq == 3 and cache.num_blocks == 9
    assert cache.layout == "vllm"
    assert cache.key_caches[0].shape == (9, 2, 2, 4, 8)  # x = 16 // 2 bytes
    assert cache.value_caches[1].shape == (9, 2, 16, 4)
    nhd = make({"FERRUM_USE_VLLM_PAGED_ATTN": "0"}, max_blocks=5)
    assert nhd.layout == "nhd" and nhd.key_caches[0].shape == (5, 4, 2, 16)
    assert make(model_max=100000).capacity == 512  # kv_capacity default


def test_kv_max_blocks_from_env(monkeypatch):
    monkeypatch.setenv("FERRUM_KV_MAX_BLOCKS", "7")
    assert make().num_blocks == 7


def test_slot_mapping_block_tables_and_free():
    cache = make(max_blocks=8)
    cache.add(0, [1, 2, 3])
    cache.reserve(0, 6)
    cache.add(1, [4])
    cache.reserve(1, 1)
    blocks0 = cache.seqs[0].blocks
    assert len(blocks0) == 2 and cache.allocator.num_free == 5
    assert cache.slot_mapping(0, 3, 6) == [blocks0[0] * 4 + 3, blocks0[1] * 4, blocks0[1] * 4 + 1]
    table = cache.block_tables([0, 1], "cpu")
    assert table.dtype == torch.int32 and table.shape == (2, 2)
    assert table[0].tolist() == blocks0 and table[1, 0].item() == cache.seqs[1].blocks[0]
    cache.free(0)
    assert cache.allocator.num_free == 7
    cache.free(1)
    assert cache.allocator.num_free == 8


def test_exhaustion_is_clear_and_disturbs_nothing():
    cache = make(max_blocks=4)
    cache.add(0, [1] * 5)
    cache.reserve(0, 8)
    cache.add(1, [2])
    before = (list(cache.seqs[0].blocks), list(cache.seqs[1].blocks), cache.allocator.num_free)
    with pytest.raises(KVCacheExhausted, match="out of blocks.*need 3, 2 free"):
        cache.reserve(1, 12)
    assert (cache.seqs[0].blocks, cache.seqs[1].blocks, cache.allocator.num_free) == before
    with pytest.raises(KVCacheExhausted, match="over the KV capacity"):
        cache.reserve(1, 65)


def test_prefix_cache_reuses_full_blocks_and_evicts_last():
    cache = make({"FERRUM_PREFIX_CACHE": "1"}, max_blocks=6)
    prompt = list(range(10))  # two full blocks of 4 + 2 tokens
    assert cache.add(0, prompt) == 0
    cache.reserve(0, 10)
    cache.commit(0, prompt)
    first_blocks = cache.seqs[0].blocks[:2]
    cache.free(0)
    assert cache.add(1, prompt[:9] + [99]) == 8  # both full blocks found
    assert cache.seqs[1].blocks == first_blocks
    assert cache.add(2, [0, 1, 2, 3, 7]) == 4  # shares only the first block
    assert cache.allocator.ref[first_blocks[0]] == 2
    assert cache.add(3, [5, 1, 2, 3, 4]) == 0  # the chain is over the whole prefix


def test_contiguous_mode_when_paged_kv_off():
    cache = make({"FERRUM_METAL_PAGED_KV": "0", "FERRUM_PAGED_MAX_SEQS": "2", "FERRUM_KV_CAPACITY": "8"})
    cache.add(0, [1])
    cache.add(1, [1])
    assert cache.seqs[1].blocks == [2, 3]
    with pytest.raises(KVCacheExhausted, match="no free sequence slot"):
        cache.add(2, [1])
    cache.free(0)
    cache.add(2, [1])
    assert cache.seqs[2].blocks == [0, 1]


def test_allocator_refcounts():
    alloc = BlockAllocator(3)
    a = alloc.allocate(2)
    alloc.acquire(a[0])
    alloc.release(a)
    assert alloc.num_free == 2 and alloc.ref[a[0]] == 1
    with pytest.raises(KVCacheExhausted):
        alloc.allocate(3)
