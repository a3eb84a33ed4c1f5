"""Input checks shared by the op wrappers.

They run on CPU tensors too, so every error is testable without a GPU, and each
message names the argument and what was expected. Shape-only: nothing here reads
tensor values, so the wrappers stay traceable by torch.compile.
"""

from collections.abc import Sequence

import torch

HALF_TYPES = (torch.float16, torch.bfloat16)
FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32)


def _names(dtypes: Sequence[torch.dtype]) -> str:
    return " or ".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(name: str, t, *, dtypes: Sequence[torch.dtype] | None = None, ndim: int | None = None,
                 min_ndim: int | None = None, contiguous: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype {_names(dtypes)}, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(t.shape)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor")


def check_same_device(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} like {ref_name}, got one on {t.device}")


def check_same_dtype(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.dtype != ref.dtype:
        raise TypeError(f"{name}: expected dtype {ref.dtype} like {ref_name}, got {t.dtype}")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)}, got {tuple(t.shape)}")


def check_rows(name: str, t: torch.Tensor) -> None:
    """t viewed as [rows, t.shape[-1]]: unit last stride, leading dims that flatten."""
    if t.dim() >= 1 and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected a unit stride in the last dimension, got strides {t.stride()}")
    for d in range(t.dim() - 3, -1, -1):
        if t.shape[d] > 1 and t.stride(d) != t.stride(d + 1) * t.shape[d + 1]:
            raise ValueError(f"{name}: leading dimensions must flatten into rows, got shape "
                             f"{tuple(t.shape)} with strides {t.stride()}")


def check_out(out: torch.Tensor, shape: Sequence[int], like_name: str, like: torch.Tensor,
              dtype: torch.dtype | None = None) -> None:
    check_tensor("out", out, contiguous=True)
    check_shape("out", out, shape)
    if dtype is None:
        check_same_dtype("out", out, like_name, like)
    elif out.dtype != dtype:
        raise TypeError(f"out: expected dtype {dtype}, got {out.dtype}")
    check_same_device("out", out, like_name, like)



LAYOUTS = ("vllm", "nhd")


def check_layout(layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout: expected 'vllm' or 'nhd', got {layout!r}")


def check_kv_cache(key_cache: torch.Tensor, value_cache: torch.Tensor, layout: str, dtype: torch.dtype,
                 head_dim: int, ref_name: str, ref: torch.Tensor) -> tuple[int, int]:
    """Checks a paged cache pair against `layout`; returns (num_kv_heads, block_size)."""
    check_layout(layout)
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
