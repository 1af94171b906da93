"""Builds fastmtl and its compiled extension fastmtl._C.

CPU kernels are always built. CUDA kernels are built when torch has CUDA and nvcc is
found, or when FORCE_CUDA=1; FASTMTL_CPU_ONLY=1 turns them off. Build against the torch
already installed: ``pip install --no-build-isolation -e .``

FASTMTL_SANITIZE=1 builds the C++ sources with AddressSanitizer and UndefinedBehaviorSanitizer
(-O1, frame pointers, UB fatal) for tools/sanitize.sh; such a build needs libasan preloaded.
"""

import glob
import os
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _prefer_real_cuda_home() -> None:
    # /usr/local/bin/nvcc can be a wrapper script, which makes torch guess CUDA_HOME=/usr/local
    # and fail at link time on -lcudart. Point torch at the toolkit itself before it looks.
    if "CUDA_HOME" in os.environ or "CUDA_PATH" in os.environ:
        return
    nvcc = shutil.which("nvcc")
    candidates = ["/usr/local/cuda"]
    if nvcc:
        candidates.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.isdir(os.path.join(home, "lib64")):
            os.environ["CUDA_HOME"] = home
            return


_prefer_real_cuda_home()

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def _want_cuda() -> bool:
    if _flag("FASTMTL_CPU_ONLY"):
        return False
    # Decide from torch's own build, not from nvcc alone: a CPU-only torch cannot build CUDA.
    if torch.version.cuda is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1 but the installed torch has no CUDA support")
        return False
    if cpp_extension.CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1 but nvcc was not found: set CUDA_HOME")
        return False
    return True


def _nvidia_wheel_includes() -> list:
    # torch's nvidia-* wheels carry the CUDA library headers that a bare toolkit may lack.
    found = []
    for base in sys.path:
        found += glob.glob(os.path.join(base, "nvidia", "cu*", "include"))
    return sorted(set(found))


def _extension():
    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    # -fopenmp: at::parallel_for is an inline OpenMP loop, serial without it (libgomp is the
    # one torch already loaded). -fno-trapping-math lets GCC turn the box-math ternaries
    # into vector selects; -fno-math-errno lets it drop unused libm calls. No FMA contraction,
    # here (-ffp-contract=off, for builds with -march=native) or in nvcc (-fmad=false): the
    # shared box math then rounds identically on both devices, so an IoU at an NMS threshold
    # gets the same decision on the CPU and the GPU.
    cxx = ["-O3", "-g0", "-fvisibility=hidden", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    cxx += ["-ffp-contract=off"]
    link = ["-fopenmp"]
    if _flag("FASTMTL_SANITIZE"):
        # tools/sanitize.sh: -O1 keeps the build quick and the reports readable; -fno-wrapv undoes
        # Python's -fwrapv, under which signed overflow is defined and UBSan would not check it.
        # float-cast-overflow (a float out of an int's range cast to it, e.g. a huge box
        # coordinate) is not part of GCC's "undefined"; float division by zero is meant (0/0 IoU).
        san = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-omit-frame-pointer"]
        san += ["-fno-sanitize-recover=undefined,float-cast-overflow"]
        cxx = [f for f in cxx if f not in ("-O3", "-g0")] + ["-O1", "-g", "-fno-wrapv"] + san
        link += san
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "fastmtl._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU to ask: Ampere (A100, A10/RTX 30), Ada (L4, RTX 40), Hopper, and PTX for newer
        # GPUs. With a GPU visible, torch builds for it alone; CI builds 9.0 only, to be fast.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;8.6;8.9;9.0+PTX"
    sources += sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-fmad=false"]
    for inc in _nvidia_wheel_includes():
        nvcc += ["-isystem", inc]
        cxx += ["-isystem", inc]
    return cpp_extension.CUDAExtension(
        "fastmtl._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link
    )


def _version() -> str:
    with open(os.path.join(ROOT, "fastmtl", "__init__.py")) as f:
        return re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)


setup(
    name="fastmtl",
    version=_version(),
    description="C++/CUDA box IoU, NMS, RoI pooling and Gram/style ops for PyTorch, drop-in for torchvision",
    packages=find_packages(include=["fastmtl", "fastmtl.*"]),
    python_requires=">=3.9",
    # 2.8: the Gram kernels' bmm with out_dtype (float32 output from half input on CUDA).
    install_requires=["torch>=2.8", "numpy"],
    extras_require={
        # pycocotools and faster-coco-eval: the references of fastmtl.metrics.coco_evaluate.
        "test": [
            "hypothesis",
            "pytest",
            "pytest-benchmark",
            "torchvision",
            "pycocotools==2.0.11",
            "faster-coco-eval==1.8.0",
            "torchmetrics",  # the reference of fastmtl.metrics.segmentation
            "pytorch-metric-learning==2.9.0",  # the triplet loss's peer
        ],
        # The demos: progress bars, plots, PNGs, the sample photos of scikit-image and the
        # handwritten digits of scikit-learn (the composite detection scenes' objects).
        "demo": ["tqdm", "matplotlib", "pillow", "scikit-image", "scikit-learn"],
        # The multi-task benchmarks' peer (fastmtl.bench.libmtl_peer, benchmark only). LibMTL asks
        # for torch, torchvision and numpy (lower bounds, already met) but not for scipy, which its
        # CAGrad imports when LibMTL.weighting is imported.
        "bench": ["LibMTL==1.1.5", "scipy"],
    },
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["fastmtl=fastmtl.cli:main"]},
    zip_safe=False,
)
