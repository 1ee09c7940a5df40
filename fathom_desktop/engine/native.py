"""Loading llama.cpp's native library, with a reason a user can act on when it will not load.

Every engine module takes `llama_cpp` from here. llama-cpp-python loads libllama.so (and through
it libggml-cuda.so in the CUDA build) when it is imported, and reports a failure as a RuntimeError
or OSError carrying the dynamic loader's message. The loader's message names a file, not a fix;
the commonest case in the field is the CUDA package on a machine without the NVIDIA driver, whose
libcuda.so.1 only the driver installs.
"""

from __future__ import annotations

import re

from fathom_desktop.engine.errors import BackendUnavailableError

# "libcuda.so.1: cannot open shared object file: No such file or directory", as ld.so words it.
_MISSING_LIBRARY = re.compile(r"(lib[\w.+-]+\.so[\d.]*): cannot open shared object file")

NO_DRIVER = (
    "This is the CUDA build of Fathom Desktop and the NVIDIA driver is not installed "
    "(libcuda.so.1 was not found): install the NVIDIA driver, or use the CPU package."
)


def _chain(error: BaseException | None):
    """The error and the ones it was raised from or while handling, outermost first."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def explain(error: BaseException) -> str:
    """One line saying why llama.cpp's library did not load and what to do about it.

    In the packaged app PyInstaller's ctypes hook replaces the loader's message with "Failed to
    load dynlib/dll ... not found when the application was frozen", which is wrong for a missing
    driver; the loader's own OSError is still in the exception chain, so the whole chain is read.
    """
    text = " ".join(str(error).split()) or type(error).__name__
    missing = next(
        (found for e in _chain(error) if (found := _MISSING_LIBRARY.search(str(e)))), None
    )
    if missing is None:
        return f"llama.cpp could not be loaded: {text}"
    library = missing.group(1)
    if library.startswith("libcuda.so"):
        return NO_DRIVER
    if library.startswith(("libcudart", "libcublas")):
        return (
            f"The CUDA runtime library {library} is missing: reinstall Fathom Desktop's CUDA "
            "package, or install the CUDA toolkit that llama-cpp-python was built with."
        )
    return f"llama.cpp could not be loaded: the library {library} is missing."


try:
    import llama_cpp
except (OSError, RuntimeError) as _error:
    raise BackendUnavailableError(explain(_error)) from _error

__all__ = ["explain", "llama_cpp"]
