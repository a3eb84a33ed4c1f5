"""silu_and_mul against its reference twin."""

import pytest
import torch
from torch.library import opcheck

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, poisoned_like

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
SHAPES = [(1, 2), (7, 2 * 768), (17, 2 * 14336), (513, 2 * 1000), (4097, 2 * 3)]

needs_ops = pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="ferrum_ext._C not built")


def test_rejects_odd_last_dim():
    with pytest.raises(ValueError, match="input: expected an even last dimension"):
        ops.silu_and_mul(torch.randn(3, 7))


def test_rejects_bad_out_shape():
    with pytest.raises(ValueError, match="out: expected shape \\(3, 4\\)"):
        ops.silu_and_mul(torch.randn(3, 8), out=torch.empty(3, 8))


def test_rejects_out_dtype():
    with pytest.raises(TypeError, match="out: expected dtype torch.float32"):
        ops.silu_and_mul(torch.randn(3, 8), out=torch.empty(3, 4, dtype=torch.float16))


def test_cpu_path_matches_reference():
    x = torch.randn(5, 2 * 96)
    torch.testing.assert_close(ops.silu_and_mul(x), reference.silu_and_mul(x))
    d = 96
    torch.testing.assert_close(reference.silu_and_mul(x), torch.nn.functional.silu(x[:, :d]) * x[:, d:])


@needs_ops
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_opcheck_and_compile(device):
    x = torch.randn(5, 128, device=device, dtype=torch.bfloat16)
    opcheck(torch.ops.ferrum_ext.silu_and_mul.default, (torch.empty(5, 64, device=device, dtype=x.dtype), x))
    compiled = torch.compile(lambda a: ops.silu_and_mul(a), fullgraph=True)
    assert_rel_close(compiled(x), reference.silu_and_mul(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", SHAPES)
def test_matches_reference(dtype, rows, width):
    x = torch.randn(rows, width, device="cuda", dtype=dtype) * 2
    out = ops.silu_and_mul(x, out=poisoned_like(x, shape=(rows, width // 2)))
    assert_rel_close(out, reference.silu_and_mul(x))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_strided_rows_and_3d(dtype):
    base = torch.randn(11, 4 * 512, device="cuda", dtype=dtype)
    x = base[:, : 2 * 512]  # row stride 2048
    assert_rel_close(ops.silu_and_mul(x), reference.silu_and_mul(x))
    x_odd = base[:, 1 : 1 + 2 * 512]  # misaligned
    assert_rel_close(ops.silu_and_mul(x_odd), reference.silu_and_mul(x_odd))
    x3 = torch.randn(2, 3, 2 * 384, device="cuda", dtype=dtype)
    assert_rel_close(ops.silu_and_mul(x3), reference.silu_and_mul(x3))
