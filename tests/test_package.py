"""The package imports and its CPU paths work whether or not ferrum_ext._C is built."""

import subprocess
import sys

import ferrum_ext

# Block ferrum_ext._C as if it had never been built, then use the package.
_WITHOUT_EXTENSION = """
import sys
sys.modules["ferrum_ext._C"] = None
import torch, ferrum_ext
assert not ferrum_ext.cuda_ops_available()
assert "ferrum_ext._C" in ferrum_ext.extension_error()
x = torch.randn(3, 16)
out = ferrum_ext.ops.rms_norm(x, torch.ones(16))
torch.testing.assert_close(out, ferrum_ext.reference.rms_norm(x, torch.ones(16), 1e-6))
print("ok")
"""


def test_imports_and_runs_without_extension():
    result = subprocess.run([sys.executable, "-c", _WITHOUT_EXTENSION], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_extension_state_is_consistent():
    assert ferrum_ext.cuda_ops_available() == (ferrum_ext.extension_error() is None)


def test_cli_env_prints_every_knob():
    result = subprocess.run([sys.executable, "-m", "ferrum_ext", "env"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    for variable in ("FERRUM_USE_VLLM_PAGED_ATTN", "FERRUM_MOE_BATCH_THRESHOLD", "FERRUM_KV_CAPACITY"):
        assert variable in result.stdout
