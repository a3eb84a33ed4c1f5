"""Build ferrum_ext: the pure-Python package plus the CUDA extension ferrum_ext._C.

Environment knobs:
  TORCH_CUDA_ARCH_LIST   archs to build (default: the visible GPUs' archs from
                         nvidia-smi, else "8.0;8.9;9.0a"); never torch.cuda.
  MAX_JOBS               parallel compile jobs (ninja), read by torch.
  NVCC_THREADS           threads nvcc uses per job (--threads), default 1.
  CUDA_HOME              toolkit root; else found from nvcc, else /usr/local/cuda.
  CUTLASS_DIR            CUTLASS checkout or include dir; else the nvidia-cutlass package.
  FERRUM_EXT_SKIP_CUDA=1 install the pure-Python package only.

Install with `pip install --no-build-isolation -e .` so the build uses the
torch already installed (the extension must match it).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.9;9.0a"


def say(msg: str) -> None:
    print(f"ferrum_ext setup: {msg}", file=sys.stderr, flush=True)


def find_cuda_home() -> str | None:
    """CUDA_HOME, else the toolkit around the real nvcc, else /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        # nvcc on PATH may be a symlink or a wrapper script; accept the
        # directory only if it really holds a toolkit.
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            return home
    return None


def visible_gpu_archs() -> str | None:
    """Compute capabilities of the visible GPUs, via nvidia-smi (no CUDA context)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    caps = sorted({line.strip() for line in out.splitlines() if line.strip()})
    # Hopper gets the "a" target so its wgmma / setmaxnreg paths are built.
    caps = [c + "a" if c in ("9.0", "10.0") else c for c in caps]
    return ";".join(caps) or None


def find_cutlass_include() -> str | None:
    root = os.environ.get("CUTLASS_DIR")
    if root:
        for inc in (os.path.join(root, "include"), root):
            if os.path.exists(os.path.join(inc, "cutlass", "cutlass.h")):
                return inc
        say(f"CUTLASS_DIR={root} holds no cutlass/cutlass.h; ignoring it")
    try:
        import cutlass_library  # from the nvidia-cutlass package
    except ImportError:
        return None
    inc = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
    return inc if os.path.exists(os.path.join(inc, "cutlass", "cutlass.h")) else None


def cuda_extensions():
    if os.environ.get("FERRUM_EXT_SKIP_CUDA") == "1":
        say("FERRUM_EXT_SKIP_CUDA=1: installing the pure-Python package without ferrum_ext._C")
        return [], {}
    cuda_home = find_cuda_home()
    if cuda_home is None:
        say("no CUDA compiler found (CUDA_HOME, nvcc on PATH, /usr/local/cuda): "
            "installing the pure-Python package without ferrum_ext._C")
        return [], {}
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = cuda_home
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = visible_gpu_archs() or DEFAULT_ARCHS
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    nvcc_threads = os.environ.get("NVCC_THREADS", "1")
    # sm_90a device code (wgmma / TMA kernels: the Hopper MoE prefill tier) is only built, and
    # only dispatched to, when the arch list names 9.0a.
    archs = os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split()
    include_dirs = [os.path.join(ROOT, "csrc")]
    cutlass = find_cutlass_include()
    if cutlass:
        include_dirs.append(cutlass)
    sm90a = bool(cutlass) and any(a.split("+")[0] == "9.0a" for a in archs)
    say(f"building ferrum_ext._C with CUDA at {cuda_home} for archs "
        f"{os.environ['TORCH_CUDA_ARCH_LIST']} (MAX_JOBS={os.environ.get('MAX_JOBS', 'auto')}, "
        f"NVCC_THREADS={nvcc_threads}, CUTLASS={cutlass or 'not found'}, sm_90a kernels={'yes' if sm90a else 'no'})")
    sources = sorted({
        os.path.relpath(p, ROOT)
        for pattern in ("csrc/**/*.cpp", "csrc/**/*.cu")
        for p in glob.glob(os.path.join(ROOT, pattern), recursive=True)
    })
    ext = CUDAExtension(
        name="ferrum_ext._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=[("Py_LIMITED_API", "0x030A0000")],
        py_limited_api=True,
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": [
                "-O3", "--expt-relaxed-constexpr", "-lineinfo",
                f"--threads={nvcc_threads}",
                *(["-DFERRUM_SM90A_BUILT"] if sm90a else []),
                "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            ],
        },
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = cuda_extensions()
setup(
    packages=find_packages(include=["ferrum_ext", "ferrum_ext.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp310"}} if ext_modules else {},
)
