"""Suite-wide set-up: headless Qt, the shared read-only fixtures, and the tiny models every part uses."""

from __future__ import annotations

import os
from pathlib import Path

# Set before any Qt import so that every test, and every process a test starts, runs headless.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# No test may reach the network; huggingface-hub honours these.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def shared_fixtures() -> Path:
    if not SHARED_FIXTURES.is_dir():
        pytest.fail(f"shared fixtures missing at {SHARED_FIXTURES}; the suite needs ../shared beside the checkout")
    return SHARED_FIXTURES
