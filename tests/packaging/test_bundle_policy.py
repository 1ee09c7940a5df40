"""What the package keeps and drops, checked on PyInstaller-shaped lists without building."""

from __future__ import annotations

from pathlib import Path

from bundle_policy import (
    Backend,
    filter_entries,
    keep,
    prune_unreachable,
    resource_datas,
)

PLUGINS = "PySide6/Qt/plugins/"


def test_only_the_xcb_and_offscreen_platforms_ship() -> None:
    for plugin in ("libqxcb.so", "libqoffscreen.so"):
        assert keep(PLUGINS + "platforms/" + plugin, Backend.CPU)
    for plugin in ("libqwayland.so", "libqeglfs.so", "libqvnc.so", "libqlinuxfb.so"):
        assert not keep(PLUGINS + "platforms/" + plugin, Backend.CPU)
    assert not keep(PLUGINS + "platformthemes/libqgtk3.so", Backend.CPU)
    assert not keep(PLUGINS + "wayland-shell-integration/libxdg-shell.so", Backend.CPU)
    assert not keep(PLUGINS + "imageformats/libqjpeg.so", Backend.CPU)
    assert keep(PLUGINS + "imageformats/libqsvg.so", Backend.CPU)
    assert not keep("PySide6/Qt/translations/qtbase_de.qm", Backend.CPU)
    assert keep("PySide6/Qt/lib/libQt6Widgets.so.6", Backend.CPU)


def test_llama_libraries_keep_the_load_name_and_sonames_only() -> None:
    lib = "llama_cpp/lib/"
    kept = {
        name
        for name in (
            "libllama.so",
            "libllama.so.0",
            "libllama.so.0.5.0",
            "libggml.so",
            "libggml.so.0",
            "libggml.so.0.25.3",
            "libggml-base.so.0",
            "libggml-cpu.so.0",
            "libmtmd.so",
            "libmtmd.so.0",
            "libggml-cuda.so.0",
        )
        if keep(lib + name, Backend.CPU)
    }
    assert kept == {"libllama.so", "libggml.so.0", "libggml-base.so.0", "libggml-cpu.so.0"}
    assert keep(lib + "libggml-cuda.so.0", Backend.CUDA)
    assert not keep(lib + "libmtmd.so.0", Backend.CUDA)


def test_filter_entries_works_on_toc_tuples() -> None:
    toc = [
        ("llama_cpp/lib/libllama.so", "/site/llama_cpp/lib/libllama.so", "BINARY"),
        ("llama_cpp/lib/libmtmd.so.0", "/site/llama_cpp/lib/libmtmd.so.0", "BINARY"),
        (PLUGINS + "platforms/libqwayland.so", "/site/x/libqwayland.so", "BINARY"),
    ]
    assert [dest for dest, _, _ in filter_entries(toc, Backend.CPU)] == [
        "llama_cpp/lib/libllama.so"
    ]


def test_prune_drops_what_only_removed_plugins_linked_and_its_links() -> None:
    needed = {
        "/s/qxcb.so": ["libQt6XcbQpa.so.6", "libc.so.6"],
        "/s/XcbQpa": ["libQt6Gui.so.6", "libxcb-icccm.so.4"],
        "/s/Gui": [],
        "/s/icccm": [],
        "/s/Wayland": ["libwayland-client.so.0"],
        "/s/gtk": ["libglib-2.0.so.0"],
        "/s/llama": ["libggml.so.0"],
        "/s/ggml": [],
        "/s/ext.so": ["libpng16.so.16"],
        "/s/png": [],
    }
    binaries = [
        (PLUGINS + "platforms/libqxcb.so", "/s/qxcb.so", "BINARY"),
        ("PySide6/Qt/lib/libQt6XcbQpa.so.6", "/s/XcbQpa", "BINARY"),
        ("PySide6/Qt/lib/libQt6Gui.so.6", "/s/Gui", "BINARY"),
        ("libxcb-icccm.so.4", "/s/icccm", "BINARY"),
        ("PySide6/Qt/lib/libQt6WaylandClient.so.6", "/s/Wayland", "BINARY"),
        ("libgtk-3.so.0", "/s/gtk", "BINARY"),
        ("llama_cpp/lib/libllama.so", "/s/llama", "BINARY"),
        ("llama_cpp/lib/libggml.so.0", "/s/ggml", "BINARY"),
        ("numpy/_core/_multiarray.so", "/s/ext.so", "EXTENSION"),
        ("libpng16.so.16", "/s/png", "BINARY"),
    ]
    datas = [
        ("libQt6Gui.so.6", "PySide6/Qt/lib/libQt6Gui.so.6", "SYMLINK"),
        ("libQt6WaylandClient.so.6", "PySide6/Qt/lib/libQt6WaylandClient.so.6", "SYMLINK"),
        ("resources/icons/fathom-desktop.svg", "/tree/resources/icons/fathom-desktop.svg", "DATA"),
    ]
    kept, kept_datas, dropped = prune_unreachable(binaries, datas, lambda src: needed[src])
    assert sorted(dropped) == [
        "PySide6/Qt/lib/libQt6WaylandClient.so.6",
        "libQt6WaylandClient.so.6",
        "libgtk-3.so.0",
    ]
    assert {dest for dest, _, _ in kept} == {dest for dest, _, _ in binaries if dest not in dropped}
    assert [dest for dest, _, _ in kept_datas] == [
        "libQt6Gui.so.6",
        "resources/icons/fathom-desktop.svg",
    ]


def test_resource_datas_ship_resources_but_not_partials_or_caches(tmp_path: Path) -> None:
    root = tmp_path / "resources"
    (root / "icons").mkdir(parents=True)
    (root / "fathom-tiny" / "__pycache__").mkdir(parents=True)
    (root / "icons" / "fathom-desktop.svg").write_text("<svg/>")
    (root / "fathom-tiny" / "model.safetensors").write_bytes(b"x")
    (root / "fathom-tiny" / ".model.safetensors.partial").write_bytes(b"x")
    (root / "fathom-tiny" / "__pycache__" / "x.pyc").write_bytes(b"x")
    pairs = resource_datas(root)
    assert sorted((Path(src).name, dest) for src, dest in pairs) == [
        ("fathom-desktop.svg", "resources/icons"),
        ("model.safetensors", "resources/fathom-tiny"),
    ]
