"""rms_norm and fused_add_rms_norm against their reference twins."""

import pytest
import torch
from torch.library import opcheck

import ferrum_ext
from ferrum_ext import ops, reference
from ferrum_ext.testing import assert_rel_close, poisoned_like

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# (rows, hidden): odd row counts, hidden sizes that do and don't allow 16-byte accesses.
SHAPES = [(1, 64), (7, 4096), (17, 5120), (513, 1000), (3, 127), (4097, 128)]

needs_ops = pytest.mark.skipif(not ferrum_ext.cuda_ops_available(), reason="ferrum_ext._C not built")


# ---- input errors (CPU) ----------------------------------------------------------


def test_rms_norm_rejects_wrong_weight_shape():
    with pytest.raises(ValueError, match="weight: expected shape \\(8,\\)"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(7))


def test_rms_norm_rejects_dtype_mismatch():
    with pytest.raises(TypeError, match="weight: expected dtype torch.float16"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float16), torch.randn(8))


def test_rms_norm_rejects_unsupported_dtype():
    with pytest.raises(TypeError, match="input: expected dtype float16 or bfloat16 or float32"):
        ops.rms_norm(torch.ones(2, 8, dtype=torch.int32), torch.ones(8, dtype=torch.int32))


def test_rms_norm_rejects_strided_last_dim():
    x = torch.randn(4, 16)[:, ::2]
    with pytest.raises(ValueError, match="input: expected a unit stride in the last dimension"):
        ops.rms_norm(x, torch.randn(8))


def test_rms_norm_rejects_bad_out():
    with pytest.raises(ValueError, match="out: expected shape \\(2, 8\\)"):
        ops.rms_norm(torch.randn(2, 8), torch.randn(8), out=torch.empty(2, 9))


def test_fused_add_rms_norm_rejects_residual_shape():
    with pytest.raises(ValueError, match="residual: expected shape \\(2, 8\\)"):
        ops.fused_add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.randn(8))


def test_rms_norm_rejects_device_mismatch():
    # A meta tensor stands in for a second device: the check runs before any compute.
    with pytest.raises(ValueError, match="weight: expected a tensor on meta like input, got one on cpu"):
        ops.rms_norm(torch.randn(2, 8, device="meta"), torch.randn(8))


# ---- CPU path, schema, fake impls -------------------------------------------------


def test_cpu_path_matches_reference():
    x, w = torch.randn(5, 96), torch.randn(96)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), reference.rms_norm(x, w, 1e-5))


@needs_ops
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_opcheck(device):
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16)
    w = torch.randn(64, device=device, dtype=torch.bfloat16)
    opcheck(torch.ops.ferrum_ext.rms_norm.default, (torch.empty_like(x), x, w, 1e-6))
    opcheck(torch.ops.ferrum_ext.fused_add_rms_norm.default, (torch.empty_like(x), x, x.clone(), w, 1e-6))


@needs_ops
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_torch_compile_fullgraph(device):
    x = torch.randn(3, 64, device=device, dtype=torch.float16)
    w = torch.randn(64, device=device, dtype=torch.float16)
    compiled = torch.compile(lambda a, b: ops.rms_norm(a, b, 1e-6), fullgraph=True)
    assert_rel_close(compiled(x, w), reference.rms_norm(x, w, 1e-6))


# ---- kernel vs reference (GPU) -----------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", SHAPES)
def test_rms_norm_matches_reference(dtype, rows, hidden):
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype) * 3
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    out = ops.rms_norm(x, w, 1e-6, out=poisoned_like(x))
    assert_rel_close(out, reference.rms_norm(x, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_strided_and_3d_rows(dtype):
    base = torch.randn(9, 2 * 4096, device="cuda", dtype=dtype)
    x = base[:, 8:4104]  # row stride 8192, 16-byte aligned
    w = torch.randn(4096, device="cuda", dtype=dtype)
    assert_rel_close(ops.rms_norm(x, w, out=poisoned_like(x)), reference.rms_norm(x, w, 1e-6))
    x_odd = base[:, 1:4097]  # misaligned: takes the scalar path
    assert_rel_close(ops.rms_norm(x_odd, w, out=poisoned_like(x_odd)), reference.rms_norm(x_odd, w, 1e-6))
    x3 = torch.randn(3, 5, 4096, device="cuda", dtype=dtype)
    assert_rel_close(ops.rms_norm(x3, w, out=poisoned_like(x3)), reference.rms_norm(x3, w, 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", SHAPES)
def test_fused_add_rms_norm_matches_reference(dtype, rows, hidden):
    x = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    residual = torch.randn(rows, hidden, device="cuda", dtype=dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    ref_residual = residual.clone()
    ref = reference.fused_add_rms_norm(x, ref_residual, w, 1e-6)
    out = ops.fused_add_rms_norm(x, residual, w, 1e-6, out=poisoned_like(x))
    assert_rel_close(residual, ref_residual, what="residual")
    assert_rel_close(out, ref)


@pytest.mark.gpu
def test_fused_add_rms_norm_in_place_on_input():
    x = torch.randn(33, 2048, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    w = torch.randn(2048, device="cuda", dtype=torch.bfloat16)
    ref = reference.fused_add_rms_norm(x.clone(), residual.clone(), w, 1e-6)
    out = ops.fused_add_rms_norm(x, residual, w, 1e-6, out=x)
    assert out.data_ptr() == x.data_ptr()
    assert_rel_close(x, ref)


@pytest.mark.gpu
def test_rms_norm_runs_on_current_stream_under_graph_capture():
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(1024, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    ops.rms_norm(x, w, out=out)  # warm-up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.rms_norm(x, w, out=out)
    x.copy_(torch.randn_like(x))
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    assert_rel_close(out, reference.rms_norm(x, w, 1e-6))
