"""Configures, builds and tests the CMake C++ library (build-cmake/) against the installed torch.

A CUDA build of torch makes find_package(Torch) look for the CUDA toolkit, nvrtc and an arch
list even for CPU sources; this fills them in (see shared BUILD-NOTES). CUDA sources are
compiled too when nvcc is found, unless FASTMTL_CPU_ONLY=1.
"""

import glob
import os
import shutil
import subprocess
import sys

import torch


def _cuda_args() -> list:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if torch.version.cuda is None or not os.path.exists(nvcc):
        return []
    site = [p for p in sys.path if p.endswith("site-packages")]
    nvrtc = [f for s in site for f in glob.glob(os.path.join(s, "nvidia", "cu*", "lib", "libnvrtc.so*"))]
    includes = [d for s in site for d in glob.glob(os.path.join(s, "nvidia", "cu*", "include"))]
    os.environ["PATH"] = os.path.join(cuda_home, "bin") + os.pathsep + os.environ["PATH"]
    args = [
        f"-DCUDAToolkit_ROOT={cuda_home}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DTORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '9.0')}",
        "-DCMAKE_CUDA_ARCHITECTURES=90",
        f"-DFASTMTL_WITH_CUDA={'OFF' if os.environ.get('FASTMTL_CPU_ONLY') == '1' else 'ON'}",
        f"-DFASTMTL_EXTRA_INCLUDES={';'.join(includes)}",
    ]
    if nvrtc:
        args.append(f"-DCUDA_nvrtc_LIBRARY={sorted(nvrtc)[0]}")
    return args


def main() -> None:
    build = "build-cmake"
    cmake = shutil.which("cmake")
    configure = [
        cmake,
        "-S",
        ".",
        "-B",
        build,
        "-G",
        "Ninja",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        *_cuda_args(),
    ]
    if shutil.which("ccache"):
        configure += ["-DCMAKE_CXX_COMPILER_LAUNCHER=ccache", "-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"]
    for cmd in (
        configure,
        [cmake, "--build", build, "-j", os.environ.get("MAX_JOBS", "2")],
        ["ctest", "--test-dir", build, "--output-on-failure"],
    ):
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
