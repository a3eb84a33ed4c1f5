"""ferrum_ext: hand-written CUDA kernels for LLM inference, as PyTorch custom ops.

`ferrum_ext.ops` holds the typed entry points (torch.ops.ferrum_ext.* when the
extension is built, the pure-PyTorch twins of `ferrum_ext.reference` otherwise);
`ferrum_ext.runtime_env` parses the FERRUM_* environment.
"""

from ferrum_ext._extension import cuda_ops_available, extension_error
from ferrum_ext import ops, reference

__all__ = ["cuda_ops_available", "extension_error", "ops", "reference"]
__version__ = "0.1.0"
