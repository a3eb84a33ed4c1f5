"""Paged attention: the KV-cache writer, decode and varlen (plain and tiled-Q4)."""

import torch

from ferrum_ext import reference
from ferrum_ext._checks import (
    FLOAT_TYPES,
    HALF_TYPES,
    check_kv_cache,
    check_out,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
)
from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.ops._dispatch import LIB


_HEAD_DIMS = (64, 96, 128, 256)
_BLOCK_SIZES = (8, 16, 32)


def check_kernel_support(name: str, dtype: torch.dtype, head_dim: int, block_size: int | None = None,
                         group: int | None = None) -> None:
    """What the CUDA kernels support (checked for CUDA tensors; the CPU reference takes any size):
    fp16/bf16, head_dim 64/96/128/256, block_size 8/16/32, GQA group <= 16."""
    if dtype not in HALF_TYPES:
        raise TypeError(f"{name}: expected dtype float16 or bfloat16 on CUDA, got {dtype}")
    if head_dim not in _HEAD_DIMS:
        raise ValueError(f"{name}: unsupported head_dim {head_dim} (expected one of {_HEAD_DIMS})")
    if block_size is not None and block_size not in _BLOCK_SIZES:
        raise ValueError(f"key_cache: unsupported block_size {block_size} (expected one of {_BLOCK_SIZES})")
    if group is not None and group > 16:
        raise ValueError(f"query: GQA group {group} (num_heads / num_kv_heads) is larger than 16")


def _check_query(query: torch.Tensor) -> None:
    check_tensor("query", query, dtypes=FLOAT_TYPES, ndim=3, contiguous=True)


def _check_group(query: torch.Tensor, kvh: int, block_size: int) -> None:
    h = query.shape[1]
    if kvh < 1 or h % kvh:
        raise ValueError(f"query: num_heads {h} must be a multiple of the caches' num_kv_heads {kvh}")
    if query.is_cuda:
        check_kernel_support("query", query.dtype, query.shape[2], block_size, h // kvh)


def _check_int_vector(name: str, t, n: int, ref: torch.Tensor) -> None:
    check_tensor(name, t, dtypes=(torch.int32,), ndim=1, contiguous=True)
    check_shape(name, t, (n,))
    check_same_device(name, t, "query", ref)


def _resolve_max_seq_len(max_seq_len, block_tables: torch.Tensor, block_size: int) -> int:
    if max_seq_len is None:
        return block_tables.shape[1] * block_size
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 0:
        raise ValueError(f"max_seq_len: expected a non-negative int, got {max_seq_len!r}")
    need = -(-max_seq_len // block_size)
    if need > block_tables.shape[1]:
        raise ValueError(f"block_tables: {block_tables.shape[1]} columns are narrower than "
                         f"ceil(max_seq_len / block_size) = {need}")
    return max_seq_len


def _resolve_num_splits(num_splits) -> int:
    if num_splits is None:
        return 0
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits: expected None or an int >= 1, got {num_splits!r}")
    return num_splits


def _check_block_tables(block_tables, rows: int, ref: torch.Tensor) -> None:
    check_tensor("block_tables", block_tables, dtypes=(torch.int32,), ndim=2)
    if block_tables.shape[0] != rows:
        raise ValueError(f"block_tables: expected {rows} rows (one per sequence), got shape "
                         f"{tuple(block_tables.shape)}")
    if block_tables.shape[1] > 1 and block_tables.stride(1) != 1:
        raise ValueError("block_tables: expected a unit stride in the last dimension")
    check_same_device("block_tables", block_tables, "query", ref)


def write_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                   slot_mapping: torch.Tensor, layout: str = "vllm") -> None:
    """Scatters key/value [T, kv_heads, D] into the paged caches (in place) at slot_mapping [T]
    (block * block_size + offset, int32 or int64); negative slots are skipped."""
    check_tensor("key", key, dtypes=FLOAT_TYPES, ndim=3)
    check_tensor("value", value)
    check_same_dtype("value", value, "key", key)
    check_same_device("value", value, "key", key)
    check_shape("value", value, key.shape)
    for name, t in (("key", key), ("value", value)):
        if t.shape[2] > 1 and t.stride(2) != 1:
            raise ValueError(f"{name}: expected a unit stride in the last dimension, got strides {t.stride()}")
    kvh, _ = check_kv_cache(key_cache, value_cache, layout, key.dtype, key.shape[2], "key", key)
    if key.is_cuda:
        check_kernel_support("key", key.dtype, key.shape[2])
    if kvh != key.shape[1]:
        raise ValueError(f"key_cache: expected num_kv_heads {key.shape[1]} like key, got shape "
                         f"{tuple(key_cache.shape)}")
    check_tensor("slot_mapping", slot_mapping, dtypes=(torch.int32, torch.int64), ndim=1, contiguous=True)
    check_shape("slot_mapping", slot_mapping, (key.shape[0],))
    check_same_device("slot_mapping", slot_mapping, "key", key)
    if cuda_ops_available():
        torch.ops.ferrum_ext.write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout)
    else:
        reference.write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout)


def paged_attention_decode(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, layout: str = "vllm",
                           *, max_seq_len: int | None = None, num_splits: int | None = None,
                           out: torch.Tensor | None = None) -> torch.Tensor:
    """One query token per sequence against its paged KV cache: query/out [B, H, D].

    max_seq_len: a host upper bound of seq_lens (default block_tables.shape[1] * block_size); the
    launch (split-K plan) depends only on it, so a CUDA graph captured once stays valid while
    seq_lens / block_tables change below it. num_splits: force the split count (None = auto).
    """
    _check_query(query)
    kvh, bs = check_kv_cache(key_cache, value_cache, layout, query.dtype, query.shape[2], "query", query)
    _check_group(query, kvh, bs)
    b = query.shape[0]
    _check_block_tables(block_tables, b, query)
    _check_int_vector("seq_lens", seq_lens, b, query)
    max_seq_len = _resolve_max_seq_len(max_seq_len, block_tables, bs)
    splits = _resolve_num_splits(num_splits)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    else:
        check_out(out, query.shape, "query", query)
    if cuda_ops_available():
        torch.ops.ferrum_ext.paged_attention_decode(out, query, key_cache, value_cache, block_tables, seq_lens,
                                                    float(scale), layout, max_seq_len, splits)
        return out
    return reference.paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, float(scale),
                                            layout, max_seq_len=max_seq_len, num_splits=num_splits, out=out)


def _check_varlen_values(query, cu_seqlens_q, seq_lens) -> None:
    """Value checks (CPU tensors only: on CUDA they would need a host sync)."""
    cu = cu_seqlens_q.tolist()
    if cu[0] != 0 or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens_q: expected non-decreasing offsets starting at 0, got {cu}")
    if cu[-1] != query.shape[0]:
        raise ValueError(f"query: expected cu_seqlens_q[-1] = {cu[-1]} rows, got {query.shape[0]}")
    for s, n in enumerate(seq_lens.tolist()):
        if cu[s + 1] - cu[s] > n:
            raise ValueError(f"seq_lens: sequence {s} has a chunk of {cu[s + 1] - cu[s]} query tokens, "
                             f"longer than its context {n}")


# _prefill_path of paged_attention_varlen -> the op's prefill_path argument.
_PREFILL_PATHS = {"auto": 0, "new": 1, "old": 2}


def paged_attention_varlen(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                           scale: float, layout: str = "vllm", tiled_q4: bool = False, *,
                           max_seq_len: int | None = None, max_q_len: int | None = None,
                           num_splits: int | None = None, out: torch.Tensor | None = None,
                           _prefill_path: str = "auto") -> torch.Tensor:
    """Packed queries [M, H, D] of several sequences (offsets cu_seqlens_q [B + 1]) against the paged
    cache, causal: query i of sequence s sits at seq_lens[s] - q_len[s] + i. tiled_q4: one CTA serves
    4 consecutive query tokens x all heads of a kv group (with max_q_len > 4: up to 64 query rows,
    e.g. 8 tokens at group 8). max_seq_len as in paged_attention_decode.
    max_q_len: host upper bound of the chunk lengths (None: unknown). With max_q_len >= 64, chunks
    of >= 64 tokens run in the chunked-prefill kernel (128 query rows per CTA) and the other rows in
    the kernel tiled_q4 picks, in the same call. The tile lists are built on the device, so a graph
    captured for (M, B, max_seq_len, max_q_len) replays with any split of M.
    _prefill_path (internal, until the prefill kernel is proven): "auto"; "new" forces the prefill
    kernel for chunks >= 64 (even with max_q_len None or a small grid); "old" uses only the previous
    kernels (tiled_q4 with max_q_len >= 64: 64 query rows per CTA)."""
    _check_query(query)
    kvh, bs = check_kv_cache(key_cache, value_cache, layout, query.dtype, query.shape[2], "query", query)
    _check_group(query, kvh, bs)
    check_tensor("seq_lens", seq_lens, dtypes=(torch.int32,), ndim=1, contiguous=True)
    b = seq_lens.shape[0]
    if b < 1:
        raise ValueError("seq_lens: expected at least one sequence")
    check_same_device("seq_lens", seq_lens, "query", query)
    _check_int_vector("cu_seqlens_q", cu_seqlens_q, b + 1, query)
    _check_block_tables(block_tables, b, query)
    max_seq_len = _resolve_max_seq_len(max_seq_len, block_tables, bs)
    if max_q_len is not None and (isinstance(max_q_len, bool) or not isinstance(max_q_len, int) or max_q_len < 0):
        raise ValueError(f"max_q_len: expected None or a non-negative int, got {max_q_len!r}")
    splits = _resolve_num_splits(num_splits)
    if _prefill_path not in _PREFILL_PATHS:
        raise ValueError(f"_prefill_path: expected one of {tuple(_PREFILL_PATHS)}, got {_prefill_path!r}")
    if query.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_varlen_values(query, cu_seqlens_q, seq_lens)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    else:
        check_out(out, query.shape, "query", query)
    if cuda_ops_available():
        torch.ops.ferrum_ext.paged_attention_varlen(out, query, key_cache, value_cache, cu_seqlens_q, seq_lens,
                                                    block_tables, float(scale), layout, bool(tiled_q4),
                                                    max_seq_len, -1 if max_q_len is None else max_q_len, splits,
                                                    _PREFILL_PATHS[_prefill_path])
        return out
    return reference.paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables,
                                            float(scale), layout, tiled_q4, max_seq_len=max_seq_len,
                                            num_splits=num_splits, out=out, _prefill_path=_prefill_path)


def register() -> None:
    """CPU kernels (the reference twins) and fake kernels of the attention ops."""
    def write_cpu(key, value, key_cache, value_cache, slot_mapping, layout):
        reference.write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout)

    def decode_cpu(out, query, key_cache, value_cache, block_tables, seq_lens, scale, layout, max_seq_len,
                   num_splits):
        reference.paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, scale, layout,
                                         out=out)

    def varlen_cpu(out, query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale, layout,
                   tiled_q4, max_seq_len, max_q_len, num_splits, prefill_path=0):
        reference.paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables,
                                         scale, layout, tiled_q4, out=out)

    for name, fn in (("write_kv_cache", write_cpu), ("paged_attention_decode", decode_cpu),
                     ("paged_attention_varlen", varlen_cpu)):
        torch.library.register_kernel(f"{LIB}::{name}", "cpu", fn)
        torch.library.register_fake(f"{LIB}::{name}", lambda *args: None)
