"""Progress reporting for the pipeline steps: a tqdm bar on a terminal, a callback in the GUI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress(Protocol):
    """Receives byte counts as a step advances; `message` is a short human-readable status."""

    def start(self, step: str, total_bytes: int) -> None: ...

    def advance(self, n_bytes: int) -> None: ...

    def message(self, text: str) -> None: ...

    def finish(self) -> None: ...


class NullProgress:
    def start(self, step: str, total_bytes: int) -> None:
        pass

    def advance(self, n_bytes: int) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self) -> None:
        pass


class TqdmProgress:
    """A bytes/s and ETA bar per step, for the command line."""

    def __init__(self, disable: bool = False, unit: str = "B") -> None:
        self._bar: tqdm | None = None
        self._disable = disable
        # Steps count bytes unless told otherwise (evaluate counts tokens).
        self._unit = unit

    def start(self, step: str, total_bytes: int) -> None:
        # Imported here: the cancellable progress below runs in processes that draw no bar.
        from tqdm import tqdm

        self.finish()
        self._bar = tqdm(
            total=total_bytes,
            desc=step,
            unit=self._unit,
            unit_scale=True,
            unit_divisor=1024 if self._unit == "B" else 1000,
            dynamic_ncols=True,
            disable=self._disable,
        )

    def advance(self, n_bytes: int) -> None:
        if self._bar is not None:
            self._bar.update(n_bytes)

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text[-60:], refresh=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CancellableProgress:
    """Progress handed to a callback `report(step, done, total, message)`, at most once per
    `interval_s` (a report per 8 MB chunk would be wasted work), that raises `cancelled()` at
    the next call once `cancel` is set: raising inside a step unwinds through atomic_output,
    which deletes the partial file."""

    def __init__(
        self,
        report: Callable[[str, int, int, str], None],
        cancel: threading.Event,
        cancelled: Callable[[], BaseException],
        interval_s: float = 0.1,
    ) -> None:
        self._report = report
        self._cancel = cancel
        self._cancelled = cancelled
        self._interval_s = interval_s
        self._step = ""
        self._done = 0
        self._total = 0
        self._last = 0.0

    def _check(self) -> None:
        if self._cancel.is_set():
            raise self._cancelled()

    def _emit(self, message: str = "", force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._interval_s:
            self._last = now
            self._report(self._step, self._done, self._total, message)

    def start(self, step: str, total_bytes: int, done_bytes: int = 0) -> None:
        self._check()
        self._step, self._done, self._total = step, done_bytes, total_bytes
        self._emit(force=True)

    def advance(self, n_bytes: int) -> None:
        self._check()
        self._done += n_bytes
        self._emit()

    def set_done(self, done_bytes: int, text: str = "") -> None:
        """For a step that measures how far it is (a download's folder) rather than counting."""
        self._check()
        self._done = done_bytes
        self._emit(text)

    def message(self, text: str) -> None:
        self._check()
        self._emit(text)

    def finish(self) -> None:
        self._done = self._total
        self._emit(force=True)
