"""Pure-PyTorch twins of every op: same signatures as ferrum_ext.ops.

They are the oracle of the GPU tests and the path taken on CPU or where the
extension is not built. Written for clarity, not speed: fp32 math, rounding to
the output dtype where the kernels round.
"""

import torch


def _into(out: torch.Tensor | None, result: torch.Tensor) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


# ---- layers -------------------------------------------------------------------


def _normalize(x32: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    # As Hugging Face LLaMA/Qwen: fp32 statistics, round, then scale by the weight.
    inv_rms = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return ((x32 * inv_rms).to(dtype).float() * weight.float()).to(dtype)


def rms_norm(input: torch.Tensor, weight: torch.Tensor, eps: float, *, out: torch.Tensor | None = None):
    return _into(out, _normalize(input.float(), weight, eps, input.dtype))


def fused_add_rms_norm(input: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                       *, out: torch.Tensor | None = None):
    """residual += input (rounded to its dtype, in place); returns rms_norm(residual) * weight."""
    residual.copy_((input.float() + residual.float()).to(residual.dtype))
    return _into(out, _normalize(residual.float(), weight, eps, input.dtype))


def silu_and_mul(input: torch.Tensor, *, out: torch.Tensor | None = None):
    d = input.shape[-1] // 2
    gate, up = input[..., :d].float(), input[..., d:].float()
    return _into(out, (torch.nn.functional.silu(gate).to(input.dtype).float() * up).to(input.dtype))
