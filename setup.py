"""Build script: the package list and the optional compiled deformable-attention op.

Metadata lives in pyproject.toml; this file holds what needs code. The extension
``unipercept.ops.MultiScaleDeformableAttention`` is built against the torch installed in the
build environment, so install with ``pip install --no-build-isolation``:

- its CPU kernels whenever a C++ compiler is there;
- its CUDA kernels too when that torch has CUDA and nvcc is found (``CUDA_HOME``);
- nothing, with a message, when torch is not importable, ``UNIPERCEPT_NO_EXTENSION=1`` is set,
  or the build fails. The package then runs on the PyTorch reference implementation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent
CSRC = Path("csrc") / "ms_deform_attn"
EXTENSION = "unipercept.ops.MultiScaleDeformableAttention"


def _say(message: str) -> None:
    # setuptools hides a build's stdout unless pip runs verbose; stderr shows up.
    sys.stderr.write(f"\n*** unipercept: {message}\n\n")


def _extensions() -> tuple[list, dict]:
    if os.environ.get("UNIPERCEPT_NO_EXTENSION") == "1":
        _say("UNIPERCEPT_NO_EXTENSION=1: not building the compiled op (PyTorch reference only)")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _say(
            "torch is not importable in the build environment, so the compiled op is skipped "
            "(install torch first and use pip install --no-build-isolation to build it)"
        )
        return [], {}

    cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / CSRC / "cpu").glob("*.cpp"))
    sources = [str(CSRC / "ms_deform_attn.cpp"), *cpu_sources]
    cxx_flags = ["-O3", "-fopenmp"]  # torch adds its own -std (C++20 for 2.13)
    link_flags = ["-fopenmp"]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if with_cuda:
        sources += sorted(
            str(path.relative_to(ROOT))
            for pattern in ("*.cu", "*.cpp")
            for path in (ROOT / CSRC / "cuda").glob(pattern)
        )
        extension = cpp_extension.CUDAExtension(
            EXTENSION,
            sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    else:
        extension = cpp_extension.CppExtension(
            EXTENSION, sources, extra_compile_args=cxx_flags, extra_link_args=link_flags
        )
    build_command = cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)
    return [extension], {"build_ext": _optional(build_command, with_cuda)}


def _optional(base: type[build_ext], with_cuda: bool) -> type[build_ext]:
    """A build_ext whose failure leaves a working pure-Python install, and says so once."""

    class OptionalBuildExt(base):
        def run(self) -> None:
            try:
                super().run()
            except Exception as error:  # any compiler or toolchain failure
                self._remove_stale_outputs()
                _say(
                    f"building the compiled op failed ({type(error).__name__}: {error}); "
                    "unipercept will use the PyTorch reference implementation"
                )
            else:
                kinds = "CPU and CUDA" if with_cuda else "CPU"
                _say(f"built the compiled deformable-attention op ({kinds} kernels)")

        def _remove_stale_outputs(self) -> None:
            # An editable install builds in place: without this, the library of an earlier
            # successful build would stay beside the sources and hide the failure.
            self.inplace = True
            for extension in self.extensions:
                Path(self.get_ext_fullpath(extension.name)).unlink(missing_ok=True)

    return OptionalBuildExt


ext_modules, cmdclass = _extensions()
setup(
    packages=[*find_packages("src"), "unipercept.conf"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
