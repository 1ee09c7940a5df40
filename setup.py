"""Package layout that pyproject.toml cannot express on its own.

The read-only files the app ships (the demo checkpoint, icons, the desktop entry) live in the
top-level resources/ folder of a checkout and install as the package `fathom_desktop.resources`,
so a wheel carries them and `importlib.resources` finds them wherever the app is installed.
"""

from pathlib import Path

from setuptools import find_packages, setup

RESOURCES = Path(__file__).resolve().parent / "resources"
# Sub-folders with importable names are declared as packages too, or setuptools warns that it
# ships them only as data; folders like fathom-tiny are plain data.
resource_packages = sorted(
    "fathom_desktop.resources." + ".".join(folder.relative_to(RESOURCES).parts)
    for folder in RESOURCES.rglob("*")
    if folder.is_dir()
    and folder.name != "__pycache__"
    and all(part.isidentifier() for part in folder.relative_to(RESOURCES).parts)
)

setup(
    packages=[
        *find_packages(include=["convert*", "fathom_desktop*"]),
        "fathom_desktop.resources",
        *resource_packages,
    ],
    package_dir={"fathom_desktop.resources": "resources"},
)
