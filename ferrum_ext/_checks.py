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


def check_kv_cache(key_cache: torch.Tensor, value_cache: torch.Tensor, layout: str, num_kv_heads: int,
                   head_dim: int, like: torch.Tensor) -> None:
    """A paged KV cache in `layout` ("vllm" or "nhd") for num_kv_heads x head_dim, dtype and device of `like`."""
    if layout not in ("vllm", "nhd"):
        raise ValueError(f'layout: expected "vllm" or "nhd", got {layout!r}')
    for name, cache in (("key_cache", key_cache), ("value_cache", value_cache)):
        check_tensor(name, cache, contiguous=True)
        check_same_dtype(name, cache, "the activations", like)
        check_same_device(name, cache, "the activations", like)
    if layout == "vllm":
        x = 16 // like.element_size()
        if (key_cache.dim() != 5 or key_cache.shape[1] != num_kv_heads or key_cache.shape[2] * x != head_dim
                or key_cache.shape[4] != x):
            raise ValueError(f"key_cache: expected the vllm layout [num_blocks, {num_kv_heads}, {head_dim // x}, "
                             f"block_size, {x}], got shape {tuple(key_cache.shape)}")
        check_shape("value_cache", value_cache, (key_cache.shape[0], num_kv_heads, head_dim, key_cache.shape[3]))
    else:
        if key_cache.dim() != 4 or key_cache.shape[2] != num_kv_heads or key_cache.shape[3] != head_dim:
            raise ValueError(f"key_cache: expected the nhd layout [num_blocks, block_size, {num_kv_heads}, "
                             f"{head_dim}], got shape {tuple(key_cache.shape)}")
        check_shape("value_cache", value_cache, key_cache.shape)
