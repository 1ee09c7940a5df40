"""The formula layout process: ziamath lays formulas out here, in a child of the window.

ziamath is pure Python. On a thread of the window's process it holds the interpreter lock while
it works, and with it the GUI thread each time that thread comes back from Qt (every formula
object of a paragraph being laid out is such a time); on a busy machine a thread holding the lock
can wait tens of milliseconds for a CPU while the GUI thread waits for the lock. Its font tables
also make the window's garbage collections slower. Here it runs beside the window instead, the
SVG is painted into an image here too (render/formula_image.py), and a formula whose layout runs
past its time is stopped for real: the window kills this process and starts another.

The protocol is two pipes of frames, each a 4-byte big-endian length and its bytes. Requests are
JSON `[tex, display, font_px, color, x_height, highlight, device_pixel_ratio]`; replies are
`R` once, when ziamath and its font are loaded (ready), then per request `I` and the image
(formula_image.to_bytes), or `N` when the formula cannot be laid out or drawn. The process exits
when the request pipe closes (the window quit or went away).

Nothing of the window is imported here: ziamath, and Qt's image classes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct

# What the client runs with `python -c`: a fixed line, so a packaged app's launcher can recognise
# it and run the layout process in place of an interpreter (packaging/launcher.py).
LAYOUT_CODE = (
    "import sys; from fathom_desktop.render.layout_host import main; sys.exit(main(sys.argv[1:]))"
)
READY = b"R"
IMAGE = b"I"
NOT_DRAWN = b"N"
FRAME = struct.Struct("!I")
# A request is a formula of at most a few thousand characters; more is not a request.
MAX_REQUEST_BYTES = 1 << 20


def write_frame(fd: int, payload: bytes) -> None:
    data = memoryview(FRAME.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def read_frame(fd: int, limit: int) -> bytes:
    """The next frame's bytes; EOFError when the other end closed."""
    size = FRAME.unpack(_read_exactly(fd, FRAME.size))[0]
    if size > limit:
        raise EOFError(f"a frame of {size} bytes")
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    while size:
        part = os.read(fd, size)
        if not part:
            raise EOFError("the pipe closed")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fathom-desktop formula layout")
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--replies", type=int, required=True)
    args = parser.parse_args(argv)
    # ziamath logs each formula it cannot parse; the window shows those as source anyway.
    logging.disable(logging.WARNING)

    import ziamath

    from fathom_desktop.render.formula_image import MathStyle, draw, to_bytes

    # SVG 1.1: QtSvg draws SVG Tiny, which has no <symbol>, so SVG 2 glyphs come out blank.
    ziamath.config.svg2 = False
    ziamath.Latex("\\frac{1}{2}").svg()  # loads the math font before the window waits on us
    try:
        write_frame(args.replies, READY)
        while True:
            tex, display, *style_fields = json.loads(read_frame(args.requests, MAX_REQUEST_BYTES))
            style = MathStyle(*style_fields)
            try:
                svg = ziamath.Latex(
                    tex, size=style.svg_size(display), color=style.color, inline=not display
                ).svg()
            except Exception:  # ziamath raises many kinds (and RecursionError) on odd TeX
                svg = None
            drawn = draw(svg, tex, display, style) if svg is not None else None
            write_frame(args.replies, NOT_DRAWN if drawn is None else IMAGE + to_bytes(drawn))
    except (EOFError, OSError):
        return 0  # the window closed its end
