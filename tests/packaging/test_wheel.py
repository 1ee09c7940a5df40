"""`pip install .` gives a working app: the wheel carries the demo model and the other resources.

The wheel is built from the checkout and installed with --no-deps into a fresh virtual
environment; the dependencies come from the suite's own environment through a path entry (not a
site directory, so the checkout's editable-install hook is not run there). Every command runs from
an empty folder, so nothing can be found by accident in the checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from fathom_desktop import demo
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel of this checkout; returns its python."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(work / "dist"), str(PROJECT_ROOT)],
        check=True,
        capture_output=True,
    )
    wheels = list((work / "dist").glob("fathom_desktop-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    (site / "fathom-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheels[0])],
        check=True,
        capture_output=True,
    )
    return python


def _run(python: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["FATHOM_HOME"] = str(tmp_path / "home")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(exist_ok=True)
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_app_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    probe = _run(
        installed, tmp_path, "-c",
        "import fathom_desktop, json; from fathom_desktop import paths;"
        "print(json.dumps([fathom_desktop.__file__, str(paths.resources_dir())]))",
    )
    assert probe.returncode == 0, probe.stderr
    module, resources = json.loads(probe.stdout)
    site = str(installed.parents[1])
    assert module.startswith(site) and resources.startswith(site)
    assert not resources.startswith(str(PROJECT_ROOT))
    for rel in ("fathom-tiny/model.safetensors", "icons/fathom-desktop.svg",
                "fathom-desktop.desktop"):
        assert (Path(resources) / rel).is_file(), rel


def test_the_installed_fathom_chat_answers_on_the_demo_model(
    installed: Path, tmp_path: Path
) -> None:
    reply = _run(
        installed, tmp_path, "-m", "fathom_desktop.chat_cli",
        "--prompt", demo.SELF_TEST_QUESTION, "--temperature", "0", "--json",
    )
    assert reply.returncode == 0, reply.stderr
    assert f"\\boxed{{{demo.SELF_TEST_ANSWER}}}" in json.loads(reply.stdout)["answer"]


def test_the_installed_app_passes_its_self_test(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, tmp_path, "-m", "fathom_desktop", "--self-test")
    assert result.returncode == 0, result.stdout + result.stderr
