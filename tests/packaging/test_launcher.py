"""The packaged launcher serves the quantizer's `-c` child and nothing else."""

from __future__ import annotations

import sys

import launcher

from convert.quantize import _CHILD_CODE


def test_only_the_quantizer_child_code_is_run(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert not launcher._run_helper_child(["fathom-desktop"])
    assert not launcher._run_helper_child(["fathom-desktop", "--self-test"])
    assert not launcher._run_helper_child(["fathom-desktop", "-c", "print('hello')", "x"])
    assert not launcher._run_helper_child(["fathom-desktop", "-c", _CHILD_CODE + "; print(1)"])
