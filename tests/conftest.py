"""Shared test setup: GPU tests skip cleanly where there is no CUDA device or no
built extension; every test starts from torch's default dtype and device."""

import pytest
import torch

import ferrum_ext


def _gpu_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    if not ferrum_ext.cuda_ops_available():
        return f"ferrum_ext._C not built ({ferrum_ext.extension_error()})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"GPU test: {reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _torch_defaults():
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(None)
    yield
    torch.set_default_dtype(dtype)
    torch.set_default_device(None)
