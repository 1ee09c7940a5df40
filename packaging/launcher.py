"""Entry point of the packaged app: the same `main` as the `fathom-desktop` console script.

Frozen, `sys.executable` is this launcher, not a Python interpreter. Code that starts a helper
process with `sys.executable` must still work, so the launcher understands the two forms the app
uses: multiprocessing's spawn children (handled by `freeze_support`), and the `python -c <code>
<arguments>` children of the quantizer, the engine host, the backend probe, the settings dialog's
Make/Measure worker and the formula layout process (handled here, for those exact codes only: the
package is not a general-purpose interpreter).
"""

from __future__ import annotations

import multiprocessing
import sys


def _run_helper_child(argv: list[str]) -> bool:
    """Run a `-c` helper child in this process if argv asks for one we know; False otherwise."""
    if len(argv) < 3 or argv[1] != "-c":
        return False
    from convert.quantize import _CHILD_CODE as QUANTIZER
    from fathom_desktop.engine.backend_probe import PROBE_CODE as BACKEND_PROBE
    from fathom_desktop.engine.host import CHILD_CODE as ENGINE_HOST
    from fathom_desktop.level_jobs import CHILD_CODE as LEVEL_WORKER
    from fathom_desktop.render.layout_host import LAYOUT_CODE as FORMULA_LAYOUT

    code = argv[2]
    if code not in (QUANTIZER, ENGINE_HOST, BACKEND_PROBE, LEVEL_WORKER, FORMULA_LAYOUT):
        return False
    # As `python -c`: sys.argv[0] is "-c" and the arguments follow.
    sys.argv = ["-c", *argv[3:]]
    exec(compile(code, "<fathom-desktop -c>", "exec"), {"__name__": "__main__"})
    return True


if __name__ == "__main__":
    multiprocessing.freeze_support()
    if not _run_helper_child(sys.argv):
        from fathom_desktop.app import main

        sys.exit(main())
