"""What the installed llama.cpp is, asked of a short-lived child process.

The window needs a few facts about llama.cpp before and beside a model load: whether its library
loads at all (a CUDA build without the NVIDIA driver does not), its version and build, and
whether it can drive the user's GPU. Loading the library to find out would bring llama.cpp, and
whatever its CUDA start-up does, into the GUI process, which the engine host exists to keep it
out of. So a child process loads it, answers in one JSON line and exits; the answer is kept for
the life of the app.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass

from fathom_desktop.engine.gpu_support import CPU_BUILD, CudaBuild, gpu_problem
from fathom_desktop.engine.planner import GpuInfo

PROBE_CODE = (
    "import sys; from fathom_desktop.engine.backend_probe import child_main; sys.exit(child_main())"
)
TIMEOUT_S = 120  # a cold CUDA start can take tens of seconds


@dataclass(frozen=True)
class BackendFacts:
    # Why llama.cpp's library does not load here, in one line; None when it does.
    problem: str | None
    version: str = "?"
    system_info: str = ""
    archs: tuple[int, ...] = ()
    runtime_version: int | None = None
    gpu_offload: bool = False

    @property
    def build(self) -> CudaBuild:
        return CudaBuild(archs=self.archs, runtime_version=self.runtime_version)

    def gpu_problem(self, gpu: GpuInfo) -> str | None:
        """Why this llama.cpp will not use `gpu`, or None if it will (gpu_support's rules)."""
        if self.problem is not None:
            return self.problem
        if not self.build.is_cuda:
            return CPU_BUILD
        problem = gpu_problem(gpu, self.build)
        if problem is None and not self.gpu_offload:
            problem = f"CUDA could not start on the {gpu.name}; running on the CPU."
        return problem


_lock = threading.Lock()
_facts: BackendFacts | None = None


def backend_facts() -> BackendFacts:
    """The facts, from a child process the first time and remembered after."""
    global _facts
    with _lock:
        if _facts is None:
            _facts = _ask_child()
        return _facts


def _ask_child() -> BackendFacts:
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE_CODE],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return BackendFacts(f"llama.cpp did not finish loading within {TIMEOUT_S} s.")
    except OSError as error:
        return BackendFacts(f"llama.cpp could not be started ({error.strerror}).")
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        last = done.stderr.strip().splitlines()[-1:] or ["no message"]
        return BackendFacts(f"llama.cpp's library crashed while loading ({name}): {last[0]}")
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        data["archs"] = tuple(data["archs"])
        return BackendFacts(**data)
    except (IndexError, ValueError, TypeError, KeyError):
        tail = (done.stderr.strip().splitlines() or ["no answer"])[-1]
        return BackendFacts(f"llama.cpp's library did not load: {tail}")


def child_main() -> int:
    """In the child: load the library, print the facts as one JSON line."""
    from fathom_desktop.engine.errors import BackendUnavailableError

    try:
        from fathom_desktop.engine import gpu_support, llama_backend
    except BackendUnavailableError as error:
        facts = BackendFacts(str(error))
    except ImportError as error:  # llama-cpp-python itself is not installed
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        facts = BackendFacts(reason)
    else:
        build = gpu_support.current_build()
        facts = BackendFacts(
            problem=None,
            version=llama_backend.library_version(),
            system_info=llama_backend.system_info(),
            archs=build.archs,
            runtime_version=build.runtime_version,
            gpu_offload=llama_backend.gpu_offload_supported(),
        )
    print(json.dumps(asdict(facts)), flush=True)
    return 0
