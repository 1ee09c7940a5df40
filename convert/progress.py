"""Progress reporting for the pipeline steps: a tqdm bar on a terminal, a callback in the GUI."""

from __future__ import annotations

from typing import Protocol

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

