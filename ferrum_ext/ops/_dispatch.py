"""How a wrapper reaches its op: torch.ops.ferrum_ext.<op> when the extension is
built, the reference twin otherwise; and the CPU + fake kernels of out-variant ops."""

import torch

from ferrum_ext import reference
from ferrum_ext._extension import cuda_ops_available

LIB = "ferrum_ext"


def run(name: str, out: torch.Tensor, *args) -> torch.Tensor:
    """Calls the out-variant op `name(out, *args)`, or its reference twin."""
    if cuda_ops_available():
        getattr(torch.ops.ferrum_ext, name)(out, *args)
    else:
        getattr(reference, name)(*args, out=out)
    return out


def register_cpu_and_fake(name: str) -> None:
    """A CPU kernel (the reference twin) and a fake kernel for the out-variant op `name`."""
    twin = getattr(reference, name)

    def cpu_kernel(out, *args):
        twin(*args, out=out)

    torch.library.register_kernel(f"{LIB}::{name}", "cpu", cpu_kernel)
    torch.library.register_fake(f"{LIB}::{name}", lambda out, *args: None)
