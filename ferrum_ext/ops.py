"""Typed entry points of every op.

Each wrapper checks its arguments (on any device, so errors are testable on
CPU), allocates `out` when the caller gives none, and runs
torch.ops.ferrum_ext.<op>. Where the extension is not built it runs the twin in
ferrum_ext.reference instead. When it is built, each op also gets a CPU kernel
(the reference) and a fake kernel, so opcheck and torch.compile(fullgraph=True)
work on any device.
"""

import torch

from ferrum_ext import reference
from ferrum_ext._checks import (
    FLOAT_TYPES,
    HALF_TYPES,
    check_kv_cache,
    check_out,
    check_rows,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_tensor,
)
from ferrum_ext._extension import cuda_ops_available

_LIB = "ferrum_ext"


def _run(name: str, out: torch.Tensor, *args) -> torch.Tensor:
    """Calls the out-variant op `name(out, *args)`, or its reference twin."""
    if cuda_ops_available():
        getattr(torch.ops.ferrum_ext, name)(out, *args)
    else:
        getattr(reference, name)(*args, out=out)
    return out


def _register_cpu_and_fake(name: str) -> None:
    """A CPU kernel (the reference twin) and a fake kernel for the out-variant op `name`."""
    twin = getattr(reference, name)

    def cpu_kernel(out, *args):
        twin(*args, out=out)

    torch.library.register_kernel(f"{_LIB}::{name}", "cpu", cpu_kernel)
    torch.library.register_fake(f"{_LIB}::{name}", lambda out, *args: None)


# ---- layers -------------------------------------------------------------------


def _check_norm(input: torch.Tensor, weight: torch.Tensor) -> None:
    check_tensor("input", input, dtypes=FLOAT_TYPES, min_ndim=1)
    check_rows("input", input)
    check_tensor("weight", weight, ndim=1, contiguous=True)
    check_same_dtype("weight", weight, "input", input)
    check_same_device("weight", weight, "input", input)
    check_shape("weight", weight, (input.shape[-1],))


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dimension: rms_norm(input) * weight, statistics in fp32."""
    _check_norm(input, weight)
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, input.shape, "input", input)
    return _run("rms_norm", out, input, weight, float(eps))


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float = 1e-6, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """residual += input in place; returns rms_norm(residual) * weight. `out` may be `input`."""
    _check_norm(input, weight)
    check_tensor("residual", residual)
    check_rows("residual", residual)
    check_same_dtype("residual", residual, "input", input)
    check_same_device("residual", residual, "input", input)
    check_shape("residual", residual, input.shape)
    if out is None:
        out = torch.empty(input.shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, input.shape, "input", input)
    return _run("fused_add_rms_norm", out, input, residual, weight, float(eps))


def silu_and_mul(input: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU: silu(input[..., :d]) * input[..., d:] for input [..., 2d]."""
    check_tensor("input", input, dtypes=FLOAT_TYPES, min_ndim=1)
    check_rows("input", input)
    if input.shape[-1] % 2:
        raise ValueError(f"input: expected an even last dimension [..., 2 * d], got shape {tuple(input.shape)}")
    shape = (*input.shape[:-1], input.shape[-1] // 2)
    if out is None:
        out = torch.empty(shape, dtype=input.dtype, device=input.device)
    else:
        check_out(out, shape, "input", input)
    return _run("silu_and_mul", out, input)



# ---- attention ----------------------------------------------------------------

_HEAD_DIMS = (64, 96, 128, 256)
_BLOCK_SIZES = (8, 16, 32)
_LAYOUTS = ("vllm", "nhd")


def _check_layout(layout) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout: expected 'vllm' or 'nhd', got {layout!r}")


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


def _check_cache(key_cache: torch.Tensor, value_cache: torch.Tensor, layout: str, dtype: torch.dtype,
                 head_dim: int, ref_name: str, ref: torch.Tensor) -> tuple[int, int]:
    """Checks a paged cache pair against `layout`; returns (num_kv_heads, block_size)."""
    _check_layout(layout)
    check_tensor("key_cache", key_cache, dtypes=FLOAT_TYPES, contiguous=True)
    check_tensor("value_cache", value_cache, dtypes=FLOAT_TYPES, contiguous=True)
    for name, t in (("key_cache", key_cache), ("value_cache", value_cache)):
        if t.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} like {ref_name}, got {t.dtype}")
        check_same_device(name, t, ref_name, ref)
    x = 16 // key_cache.element_size()
    if layout == "vllm":
        if key_cache.dim() != 5:
            hint = " (a 4-D cache is the 'nhd' layout)" if key_cache.dim() == 4 else ""
            raise ValueError("key_cache: layout 'vllm' expects [num_blocks, num_kv_heads, head_dim // x, block_size, x]"
                             f", got shape {tuple(key_cache.shape)}{hint}")
        nb, kvh, dx, bs, xx = key_cache.shape
        if xx != x or dx * x != head_dim:
            raise ValueError(f"key_cache: expected shape [num_blocks, num_kv_heads, {head_dim // x}, block_size, {x}] "
                             f"for head_dim {head_dim}, got {tuple(key_cache.shape)}")
        check_shape("value_cache", value_cache, (nb, kvh, head_dim, bs))
    else:
        if key_cache.dim() != 4:
            hint = " (a 5-D cache is the 'vllm' layout)" if key_cache.dim() == 5 else ""
            raise ValueError("key_cache: layout 'nhd' expects [num_blocks, block_size, num_kv_heads, head_dim], "
                             f"got shape {tuple(key_cache.shape)}{hint}")
        nb, bs, kvh, d = key_cache.shape
        if d != head_dim:
            raise ValueError(f"key_cache: expected head_dim {head_dim} in the last dimension, got shape "
                             f"{tuple(key_cache.shape)}")
        check_shape("value_cache", value_cache, key_cache.shape)
    if nb < 1:
        raise ValueError("key_cache: expected at least one block")
    return kvh, bs


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
    kvh, _ = _check_cache(key_cache, value_cache, layout, key.dtype, key.shape[2], "key", key)
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
    kvh, bs = _check_cache(key_cache, value_cache, layout, query.dtype, query.shape[2], "query", query)
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


def paged_attention_varlen(query: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
                           scale: float, layout: str = "vllm", tiled_q4: bool = False, *,
                           max_seq_len: int | None = None, max_q_len: int | None = None,
                           num_splits: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed queries [M, H, D] of several sequences (offsets cu_seqlens_q [B + 1]) against the paged
    cache, causal: query i of sequence s sits at seq_lens[s] - q_len[s] + i. tiled_q4: one CTA serves
    4 consecutive query tokens x all heads of a kv group. max_seq_len as in paged_attention_decode.
    max_q_len: host upper bound of the chunk lengths (None: unknown); with tiled_q4 and
    max_q_len >= 64 a CTA takes 64 query rows (chunked prefill). The tile list is built on the
    device, so a graph captured for (M, B, max_seq_len, max_q_len) replays with any split of M."""
    _check_query(query)
    kvh, bs = _check_cache(key_cache, value_cache, layout, query.dtype, query.shape[2], "query", query)
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
    if query.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_varlen_values(query, cu_seqlens_q, seq_lens)
    if out is None:
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    else:
        check_out(out, query.shape, "query", query)
    if cuda_ops_available():
        torch.ops.ferrum_ext.paged_attention_varlen(out, query, key_cache, value_cache, cu_seqlens_q, seq_lens,
                                                    block_tables, float(scale), layout, bool(tiled_q4),
                                                    max_seq_len, -1 if max_q_len is None else max_q_len, splits)
        return out
    return reference.paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables,
                                            float(scale), layout, tiled_q4, max_seq_len=max_seq_len,
                                            num_splits=num_splits, out=out)


def _register_attention() -> None:
    """CPU kernels (the reference twins) and fake kernels of the attention ops."""
    def write_cpu(key, value, key_cache, value_cache, slot_mapping, layout):
        reference.write_kv_cache(key, value, key_cache, value_cache, slot_mapping, layout)

    def decode_cpu(out, query, key_cache, value_cache, block_tables, seq_lens, scale, layout, max_seq_len,
                   num_splits):
        reference.paged_attention_decode(query, key_cache, value_cache, block_tables, seq_lens, scale, layout,
                                         out=out)

    def varlen_cpu(out, query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables, scale, layout,
                   tiled_q4, max_seq_len, max_q_len, num_splits):
        reference.paged_attention_varlen(query, key_cache, value_cache, cu_seqlens_q, seq_lens, block_tables,
                                         scale, layout, tiled_q4, out=out)

    for name, fn in (("write_kv_cache", write_cpu), ("paged_attention_decode", decode_cpu),
                     ("paged_attention_varlen", varlen_cpu)):
        torch.library.register_kernel(f"{_LIB}::{name}", "cpu", fn)
        torch.library.register_fake(f"{_LIB}::{name}", lambda *args: None)

def _check_index(name: str, t: torch.Tensor, tokens: int, like: torch.Tensor) -> None:
    check_tensor(name, t, dtypes=(torch.int32, torch.int64), ndim=1, contiguous=True)
    check_shape(name, t, (tokens,))
    check_same_device(name, t, "qkv", like)


def qk_norm_rope_write_cache(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             key_cache: torch.Tensor, value_cache: torch.Tensor, slot_mapping: torch.Tensor,
                             layout: str, num_heads: int, num_kv_heads: int,
                             q_norm_weight: torch.Tensor | None = None, k_norm_weight: torch.Tensor | None = None,
                             eps: float = 1e-6, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Attention prologue: split qkv [T, (H + 2 KVH) D], RMSNorm q/k per head (when weights are given),
    half-split RoPE at `positions` from cos/sin [max_positions, D/2] (fp32), write k/v into the paged
    cache at slot_mapping (negative = skip); returns q [T, H, D]."""
    check_tensor("qkv", qkv, dtypes=HALF_TYPES, ndim=2)
    check_rows("qkv", qkv)
    if num_heads <= 0 or num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads: expected a positive multiple of num_kv_heads, got {num_heads} and {num_kv_heads}")
    tokens, width = qkv.shape
    head_dim = width // (num_heads + 2 * num_kv_heads)
    if head_dim * (num_heads + 2 * num_kv_heads) != width or head_dim % 2 or head_dim > 256:
        raise ValueError(f"qkv: expected [T, (num_heads + 2 * num_kv_heads) * head_dim] with an even head_dim "
                         f"<= 256, got shape {tuple(qkv.shape)}")
    _check_index("positions", positions, tokens, qkv)
    _check_index("slot_mapping", slot_mapping, tokens, qkv)
    if positions.dtype != slot_mapping.dtype:
        raise TypeError("slot_mapping: expected the dtype of positions")
    for name, table in (("cos", cos), ("sin", sin)):
        check_tensor(name, table, dtypes=(torch.float32,), ndim=2, contiguous=True)
        check_same_device(name, table, "qkv", qkv)
        if table.shape[1] != head_dim // 2:
            raise ValueError(f"{name}: expected shape [max_positions, {head_dim // 2}], got {tuple(table.shape)}")
    check_shape("sin", sin, cos.shape)
    for name, w in (("q_norm_weight", q_norm_weight), ("k_norm_weight", k_norm_weight)):
        if w is not None:
            check_tensor(name, w, ndim=1, contiguous=True)
            check_same_dtype(name, w, "qkv", qkv)
            check_same_device(name, w, "qkv", qkv)
            check_shape(name, w, (head_dim,))
    check_kv_cache(key_cache, value_cache, layout, num_kv_heads, head_dim, qkv)
    shape = (tokens, num_heads, head_dim)
    if out is None:
        out = torch.empty(shape, dtype=qkv.dtype, device=qkv.device)
    else:
        check_out(out, shape, "qkv", qkv)
    return _run("qk_norm_rope_write_cache", out, qkv, positions, cos, sin, key_cache, value_cache, slot_mapping,
                layout, num_heads, num_kv_heads, q_norm_weight, k_norm_weight, float(eps))


# ---- sampling -----------------------------------------------------------------

MASK_TYPES = (torch.bool, torch.uint8)


def _check_vector_out(name: str, t, length: int, dtype: torch.dtype, like: torch.Tensor) -> None:
    check_tensor(name, t, contiguous=True)
    check_shape(name, t, (length,))
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    check_same_device(name, t, "logits", like)


def greedy_argmax(logits: torch.Tensor, *, return_value: bool = False, allowed: torch.Tensor | None = None,
                  out=None):
    """Token ids of the largest logit per row: exactly torch.argmax(logits, -1), fast at any batch.

    logits [B, V] float32/float16/bfloat16, unit stride in the last dimension, any row stride.
    Ties go to the lowest index; NaN counts as the largest value (the first NaN wins).
    allowed: optional bool/uint8 mask, [B, V] or [V]; only entries with allowed != 0 compete,
    and a row with none allowed gives id -1.
    Returns int64 ids [B]; with return_value=True the pair (ids, values) where
    values[b] = logits[b, ids[b]] in the logits dtype (-inf for id -1).
    out: the ids tensor to write, or the (ids, values) pair with return_value=True.
    """
    check_tensor("logits", logits, dtypes=FLOAT_TYPES, ndim=2)
    check_rows("logits", logits)
    batch, vocab = logits.shape
    if vocab == 0:
        raise ValueError("logits: expected a non-empty last dimension (the vocabulary), "
                         f"got shape {tuple(logits.shape)}")
    if vocab >= 2**31 - 1:
        raise ValueError(f"logits: vocabulary of {vocab} entries is too large (< 2**31 - 1)")
    if allowed is not None:
        check_tensor("allowed", allowed, dtypes=MASK_TYPES)
        if tuple(allowed.shape) not in ((batch, vocab), (vocab,)):
            raise ValueError(f"allowed: expected shape {(batch, vocab)} or {(vocab,)}, "
                             f"got {tuple(allowed.shape)}")
        check_rows("allowed", allowed)
        check_same_device("allowed", allowed, "logits", logits)
    if return_value:
        if out is None:
            ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
            values = torch.empty(batch, dtype=logits.dtype, device=logits.device)
        else:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError("out: with return_value=True expected a pair (ids, values)")
            ids, values = out
            _check_vector_out("out[0]", ids, batch, torch.int64, logits)
            _check_vector_out("out[1]", values, batch, logits.dtype, logits)
    else:
        values = None
        if out is None:
            ids = torch.empty(batch, dtype=torch.int64, device=logits.device)
        else:
            _check_vector_out("out", out, batch, torch.int64, logits)
            ids = out
    if cuda_ops_available():
        torch.ops.ferrum_ext.greedy_argmax(ids, values, logits, allowed)
    else:
        reference.greedy_argmax(logits, return_value=return_value, allowed=allowed,
                                out=(ids, values) if return_value else ids)
    return (ids, values) if return_value else ids


def _register_greedy_argmax() -> None:
    def cpu_kernel(ids, values, logits, allowed):
        if values is None:
            reference.greedy_argmax(logits, allowed=allowed, out=ids)
        else:
            reference.greedy_argmax(logits, return_value=True, allowed=allowed, out=(ids, values))

    torch.library.register_kernel(f"{_LIB}::greedy_argmax", "cpu", cpu_kernel)
    torch.library.register_fake(f"{_LIB}::greedy_argmax", lambda ids, values, logits, allowed: None)
# ---- moe ----------------------------------------------------------------------

MOE_TIERS = (None, "auto", "gemv", "small", "prefill")


def moe_route(router_logits: torch.Tensor, top_k: int, renormalize: bool = True, *,
              out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE router: softmax over experts in fp32, top-k by repeated arg-max (ties to the lower
    expert id), optional renormalisation (zero sum -> 1/k). Returns (weights fp32 [T, k], ids int32 [T, k])."""
    check_tensor("router_logits", router_logits, dtypes=FLOAT_TYPES, ndim=2)
    check_rows("router_logits", router_logits)
    num_tokens, num_experts = router_logits.shape
    if not 1 <= num_experts <= 512:
        raise ValueError(f"router_logits: expected 1..512 experts, got shape {tuple(router_logits.shape)}")
    if not isinstance(top_k, int) or not 1 <= top_k <= min(16, num_experts):
        raise ValueError(f"top_k: expected an int in 1..min(16, num_experts={num_experts}), got {top_k}")
    shape = (num_tokens, top_k)
    if out is None:
        weights = torch.empty(shape, dtype=torch.float32, device=router_logits.device)
        ids = torch.empty(shape, dtype=torch.int32, device=router_logits.device)
    else:
        weights, ids = out
        check_out(weights, shape, "router_logits", router_logits, dtype=torch.float32)
        check_out(ids, shape, "router_logits", router_logits, dtype=torch.int32)
    if cuda_ops_available():
        torch.ops.ferrum_ext.moe_route(weights, ids, router_logits, top_k, bool(renormalize))
    else:
        reference.moe_route(router_logits, top_k, bool(renormalize), out=(weights, ids))
    return weights, ids


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *,
              out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """Buckets pairs p = t*k + j by expert for the grouped GEMMs. Returns (sorted_pair_ids int32
    [T*k + min(E, T*k)*(block_m-1)], block_expert_ids int32 [ceil(that / block_m)], num_padded int32 [1]);
    see reference.moe_align for the layout. Sizes depend only on T*k, E and block_m."""
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), contiguous=True)
    if not isinstance(num_experts, int) or not 1 <= num_experts <= 4096:
        raise ValueError(f"num_experts: expected an int in 1..4096, got {num_experts}")
    if not isinstance(block_m, int) or not 1 <= block_m <= 1024:
        raise ValueError(f"block_m: expected an int in 1..1024, got {block_m}")
    max_padded, max_tiles = reference.moe_align_sizes(topk_ids.numel(), num_experts, block_m)
    if out is None:
        out = tuple(torch.empty(n, dtype=torch.int32, device=topk_ids.device) for n in (max_padded, max_tiles, 1))
    else:
        for name, t, n in zip(("sorted_pair_ids", "block_expert_ids", "num_padded"), out, (max_padded, max_tiles, 1)):
            check_tensor(f"out {name}", t, dtypes=(torch.int32,), ndim=1, contiguous=True)
            check_shape(f"out {name}", t, (n,))
            check_same_device(f"out {name}", t, "topk_ids", topk_ids)
    if cuda_ops_available():
        torch.ops.ferrum_ext.moe_align(*out, topk_ids, num_experts, block_m)
    else:
        reference.moe_align(topk_ids, num_experts, block_m, out=out)
    return tuple(out)


def _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier) -> None:
    check_tensor("hidden", hidden, dtypes=HALF_TYPES, ndim=2, contiguous=True)
    num_tokens, hidden_size = hidden.shape
    if hidden_size % 64:
        raise ValueError(f"hidden: expected a hidden size that is a multiple of 64, got shape {tuple(hidden.shape)}")
    for name, w in (("w13", w13), ("w2", w2)):
        check_tensor(name, w, ndim=3, contiguous=True)
        check_same_dtype(name, w, "hidden", hidden)
        check_same_device(name, w, "hidden", hidden)
    num_experts, two_inter = w13.shape[0], w13.shape[1]
    if two_inter % 128 or w13.shape[2] != hidden_size:
        raise ValueError(f"w13: expected shape [E, 2 * I, H={hidden_size}] with I a multiple of 64, "
                         f"got {tuple(w13.shape)}")
    check_shape("w2", w2, (num_experts, hidden_size, two_inter // 2))
    check_tensor("topk_ids", topk_ids, dtypes=(torch.int32,), ndim=2, contiguous=True)
    check_same_device("topk_ids", topk_ids, "hidden", hidden)
    if topk_ids.shape[0] != num_tokens:
        raise ValueError(f"topk_ids: expected shape [{num_tokens}, top_k], got {tuple(topk_ids.shape)}")
    if not 1 <= topk_ids.shape[1] <= num_experts:
        raise ValueError(f"topk_ids: top_k = {topk_ids.shape[1]} must be in 1..num_experts = {num_experts}")
    check_tensor("topk_weights", topk_weights, dtypes=FLOAT_TYPES)
    check_shape("topk_weights", topk_weights, topk_ids.shape)
    check_same_device("topk_weights", topk_weights, "hidden", hidden)
    for name, v in (("gemv_threshold", gemv_threshold), ("prefill_threshold", prefill_threshold)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
    if tier not in MOE_TIERS:
        raise ValueError(f"tier: expected one of {MOE_TIERS}, got {tier!r}")


def fused_moe(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, *, gemv_threshold: int = 4, prefill_threshold: int = 32,
              tier: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Qwen3-MoE expert block: out[t] = sum_j topk_weights[t, j] * down_e(silu(gate_e(x)) * up_e(x))
    with e = topk_ids[t, j]; ids outside [0, E) are skipped (graph padding rows).

    hidden [T, H] fp16/bf16; w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I] as Hugging Face
    stores them; topk_weights [T, k] (fp32; other float types are converted); topk_ids int32 [T, k].
    The kernel tier comes from T: T < gemv_threshold -> "gemv", T < prefill_threshold -> "small",
    else "prefill"; `tier` forces one. Thresholds come from the caller (runtime env), never the env."""
    _check_fused_moe(hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier)
    if out is None:
        out = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device)
    else:
        check_out(out, hidden.shape, "hidden", hidden)
    if topk_weights.dtype != torch.float32:
        topk_weights = topk_weights.float()
    topk_weights = topk_weights.contiguous()
    if cuda_ops_available():
        torch.ops.ferrum_ext.fused_moe(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold,
                                       prefill_threshold, tier or "auto")
    else:
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids, out=out)
    return out


def _register_moe() -> None:
    lib = _LIB

    def route_cpu(weights, ids, router_logits, top_k, renormalize):
        reference.moe_route(router_logits, top_k, renormalize, out=(weights, ids))

    def align_cpu(sorted_pair_ids, block_expert_ids, num_padded, topk_ids, num_experts, block_m):
        reference.moe_align(topk_ids, num_experts, block_m, out=(sorted_pair_ids, block_expert_ids, num_padded))

    def fused_cpu(out, hidden, w13, w2, topk_weights, topk_ids, gemv_threshold, prefill_threshold, tier):
        reference.fused_moe_grouped_reference(hidden, w13, w2, topk_weights, topk_ids, out=out)

    for name, kernel in (("moe_route", route_cpu), ("moe_align", align_cpu), ("fused_moe", fused_cpu)):
        torch.library.register_kernel(f"{lib}::{name}", "cpu", kernel)
        torch.library.register_fake(f"{lib}::{name}", lambda *args: None)


if cuda_ops_available():
    for _name in ("rms_norm", "fused_add_rms_norm", "silu_and_mul", "qk_norm_rope_write_cache"):
        _register_cpu_and_fake(_name)
    _register_attention()
    _register_greedy_argmax()
    _register_moe()
