"""Whether this llama.cpp build can drive the user's NVIDIA GPU; if not, why, in one line.

Two mismatches are common with a packaged CUDA build, and llama.cpp reports neither in a way a
user can act on:

- The driver is older than the CUDA release the package ships. CUDA then fails to initialise,
  llama.cpp logs one line and runs everything on the CPU: the user only sees it is slow.
- The GPU is older than every architecture the build has kernels for (CUDA 13 dropped Maxwell,
  Pascal and Volta). The first kernel launch fails with "no kernel image is available" and
  llama.cpp aborts the whole process, taking the chat window with it.

Both are known before loading: NVML gives the GPU's compute capability and the driver's CUDA
version, llama.cpp's system info the compiled architectures, and the bundled libcudart its
release. The engine then keeps every layer (and every operation) on the CPU and says why.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fathom_desktop.engine.planner import GpuInfo

# The oldest driver branch for each CUDA major release (within a major, CUDA's minor-version
# compatibility lets an older driver run a newer runtime).
MINIMUM_DRIVER = {11: "450", 12: "525", 13: "580"}

_ARCHS = re.compile(r"CUDA : ARCHS = ([\d,]+)")
_CUDART = re.compile(r"\S*/libcudart\.so[\d.]*$")


@dataclass(frozen=True)
class CudaBuild:
    # Architectures with kernels, as nvcc's __CUDA_ARCH_LIST__ spells them: 750 = sm_75.
    archs: tuple[int, ...]
    # The CUDA runtime release the build links: 13000 = CUDA 13.0; None when it cannot be read.
    runtime_version: int | None

    @property
    def is_cuda(self) -> bool:
        """Built with the CUDA backend, whether or not CUDA started on this machine."""
        return bool(self.archs)


def parse_archs(system_info: str) -> tuple[int, ...]:
    """The compiled architectures from llama_print_system_info(); () for a CPU build."""
    found = _ARCHS.search(system_info)
    if found is None:
        return ()
    return tuple(sorted(int(arch) for arch in found.group(1).split(",") if arch))


def loaded_cuda_runtime_version(maps: Path = Path("/proc/self/maps")) -> int | None:
    """cudaRuntimeGetVersion() of the libcudart this process has loaded (with llama.cpp)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        found = _CUDART.search(line)
        if found is None:
            continue
        try:
            cudart = ctypes.CDLL(found.group(0))
            version = ctypes.c_int(0)
            if cudart.cudaRuntimeGetVersion(ctypes.byref(version)) == 0:
                return version.value
        except (OSError, AttributeError):
            return None
    return None


@cache
def current_build() -> CudaBuild:
    from fathom_desktop.engine import llama_backend

    return CudaBuild(
        archs=parse_archs(llama_backend.system_info()),
        runtime_version=loaded_cuda_runtime_version(),
    )


def cuda_version_text(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


def gpu_problem(gpu: GpuInfo, build: CudaBuild) -> str | None:
    """Why this build cannot use `gpu` (a sentence ending in the fallback), or None if it can.

    Unknown facts never block the GPU: a driver that does not report its CUDA version, or a
    build whose architectures cannot be read, is given the benefit of the doubt.
    """
    runtime, driver = build.runtime_version, gpu.driver_cuda_version
    if runtime is not None and driver is not None and driver // 1000 < runtime // 1000:
        needed = MINIMUM_DRIVER.get(runtime // 1000)
        newer = f" (version {needed} or newer)" if needed else ""
        return (
            f"The NVIDIA driver supports CUDA {cuda_version_text(driver)}, and this build needs "
            f"CUDA {cuda_version_text(runtime)}: update the driver{newer} to use the "
            f"{gpu.name}; running on the CPU."
        )
    if gpu.compute_capability is not None and build.archs:
        major, minor = gpu.compute_capability
        oldest = build.archs[0]
        if major * 100 + minor * 10 < oldest:
            return (
                f"The {gpu.name} (compute capability {major}.{minor}) is older than this build "
                f"supports ({oldest // 100}.{oldest % 100 // 10} and newer); running on the CPU."
            )
    return None


CPU_BUILD = "This is the CPU build of Fathom Desktop: models run on the CPU only."


def usability_problem(gpu: GpuInfo) -> str | None:
    """Why the llama.cpp installed here will not use `gpu`, or None if it will.

    A CUDA build whose CUDA failed to start (llama.cpp then reports no GPU offload at all) is
    told apart from a CPU build by the architectures it was compiled for.
    """
    from fathom_desktop.engine import llama_backend

    build = current_build()
    if not build.is_cuda:
        return CPU_BUILD
    problem = gpu_problem(gpu, build)
    if problem is None and not llama_backend.gpu_offload_supported():
        problem = f"CUDA could not start on the {gpu.name}; running on the CPU."
    return problem
