"""Helpers for kernel tests: the per-dtype tolerances of DESIGN.md §4 in one place.

A kernel is compared with its reference twin (fp32 math) by the relative
Frobenius error ||out - ref|| / ||ref||; integer outputs must match exactly.
"""

import torch

# Relative Frobenius error allowed between a kernel and its fp32-accumulating reference.
REL_TOLERANCE = {
    torch.bfloat16: 1e-2,
    torch.float16: 2e-3,
    torch.float32: 1e-5,
}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; inf when out holds a NaN or inf that ref does not."""
    out64, ref64 = out.double(), ref.double()
    if not torch.equal(torch.isfinite(out64), torch.isfinite(ref64)):
        return float("inf")
    finite = torch.isfinite(ref64)
    diff = torch.linalg.vector_norm((out64 - ref64)[finite])
    scale = torch.linalg.vector_norm(ref64[finite])
    return float(diff / scale) if scale > 0 else float(diff)


def assert_rel_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype | None = None,
                     tol: float | None = None, what: str = "output") -> None:
    """Asserts shape equality and rel_error(out, ref) <= the tolerance of `dtype` (default out.dtype)."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    tol = REL_TOLERANCE[dtype or out.dtype] if tol is None else tol
    err = rel_error(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fills t with NaN (floats) or a sentinel (integers) so unwritten elements show."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(torch.iinfo(t.dtype).min if t.dtype != torch.bool else False)


def poisoned_like(t: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    out = torch.empty(t.shape if shape is None else shape, dtype=dtype or t.dtype, device=t.device)
    return poison_(out)
