"""Sampling: greedy argmax over logits rows."""

import torch

from ferrum_ext import reference
from ferrum_ext._checks import (
    FLOAT_TYPES,
    check_rows,
    check_same_device,
    check_shape,
    check_tensor,
)
from ferrum_ext._extension import cuda_ops_available
from ferrum_ext.ops._dispatch import LIB


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


def register() -> None:
    def cpu_kernel(ids, values, logits, allowed):
        if values is None:
            reference.greedy_argmax(logits, allowed=allowed, out=ids)
        else:
            reference.greedy_argmax(logits, return_value=True, allowed=allowed, out=(ids, values))

    torch.library.register_kernel(f"{LIB}::greedy_argmax", "cpu", cpu_kernel)
    torch.library.register_fake(f"{LIB}::greedy_argmax", lambda ids, values, logits, allowed: None)
