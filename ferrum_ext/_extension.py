"""Loads the compiled extension ferrum_ext._C, if it was built.

Importing _C runs the TORCH_LIBRARY registrations: every torch.ops.ferrum_ext
schema and its CUDA kernel. When _C is missing (FERRUM_EXT_SKIP_CUDA=1, a host
without nvcc) the package still imports and every op runs its reference twin.
"""

import importlib

import torch  # noqa: F401  (loads libtorch / libc10, which _C links against)

_error: str | None = None
try:
    importlib.import_module("ferrum_ext._C")
except ImportError as exc:  # not built, or built against another torch
    _error = f"{type(exc).__name__}: {exc}"


def cuda_ops_available() -> bool:
    """True when ferrum_ext._C is built and loaded, so torch.ops.ferrum_ext.* exist."""
    return _error is None


def extension_error() -> str | None:
    """Why ferrum_ext._C could not be loaded, or None when it was."""
    return _error
