"""Builds the ``pairfree._C`` extension.

C++ CPU kernels are always built. CUDA kernels are added when torch was built with CUDA and ``nvcc`` is
found, and either a GPU is visible or ``PAIRFREE_FORCE_CUDA=1`` (for build machines without a GPU; set
``TORCH_CUDA_ARCH_LIST`` then). ``PAIRFREE_SKIP_CUDA_BUILD=1`` builds the CPU part only.
``PAIRFREE_SKIP_EXTENSION=1`` builds nothing: the package then runs on its PyTorch reference path.
"""

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _want_cuda(torch, cuda_home) -> bool:
    if _flag("PAIRFREE_SKIP_CUDA_BUILD"):
        return False
    if _flag("PAIRFREE_FORCE_CUDA"):
        if torch.version.cuda is None or cuda_home is None:
            raise RuntimeError(
                "PAIRFREE_FORCE_CUDA=1 but the CUDA build is impossible: "
                f"torch.version.cuda={torch.version.cuda!r} (need a CUDA build of torch), "
                f"CUDA_HOME={cuda_home!r} (need nvcc)."
            )
        return True
    return torch.version.cuda is not None and cuda_home is not None and torch.cuda.is_available()


def _extensions():
    if _flag("PAIRFREE_SKIP_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    rel = lambda p: str(p.relative_to(ROOT))
    sources = [rel(p) for p in sorted(CSRC.glob("*.cpp")) + sorted((CSRC / "cpu").glob("*.cpp"))]
    # The C++ standard comes from torch's BuildExtension. CPU kernels are tuned for the building machine
    # (-march=native); set PAIRFREE_CPU_ARCH=x86-64-v2 (or another -march value) for a portable wheel.
    cxx = ["-O3", "-fopenmp", f"-march={os.environ.get('PAIRFREE_CPU_ARCH', 'native')}"]
    if _want_cuda(torch, CUDA_HOME):
        sources += [rel(p) for p in sorted((CSRC / "cuda").glob("*.cpp")) + sorted((CSRC / "cuda").glob("*.cu"))]
        ext = CUDAExtension(
            "pairfree._C",
            sources,
            define_macros=[("PAIRFREE_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension("pairfree._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
