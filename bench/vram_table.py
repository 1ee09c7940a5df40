"""Print the README's table: Fathom-R1-14B's quant ladder against common GPU sizes.

Every figure is a prediction of the VRAM planner (fathom_desktop/engine/planner.py) from
config.json and llama.cpp's per-tensor quantization mix; none is a measurement.

    .venv/bin/python bench/vram_table.py [--n-ctx 16384] [--kv-cache-type f16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fathom_desktop.engine.planner import model_memory_profile  # noqa: E402
from fathom_desktop.engine.types import FATHOM_N_CTX  # noqa: E402
from fathom_desktop.settings import SETTINGS_BY_KEY  # noqa: E402

CONFIG = (
    Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "fathom-r1-14b" / "config.json"
)
LADDER = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K"]
CARDS_GIB = [8, 12, 16, 24]
# A desktop's display and driver hold some VRAM before the app starts.
DESKTOP_USE_GIB = 0.6


def table(config: Path, n_ctx: int, kv_cache_type: str) -> str:
    header = ["Quant", "bits/weight", "file (GB)", "VRAM, all 49 layers (GiB)"]
    header += [f"{card} GB card" for card in CARDS_GIB]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    params = model_memory_profile(config, "F32").weights_bytes / 4  # every weight, 4 bytes
    for quant in LADDER:
        profile = model_memory_profile(config, quant, n_ctx=n_ctx, kv_cache_type=kv_cache_type)  # type: ignore[arg-type]
        cells = [
            quant,
            f"{profile.weights_bytes * 8 / params:.2f}",
            f"{profile.weights_bytes / 1e9:.2f}",
            f"{profile.gpu_bytes(profile.n_layers) / 2**30:.1f}",
        ]
        for card in CARDS_GIB:
            cells.append(profile.plan(int((card - DESKTOP_USE_GIB) * 2**30)).label)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--n-ctx", type=int, default=FATHOM_N_CTX)
    kv_types = SETTINGS_BY_KEY["kv_cache_type"].choices
    parser.add_argument("--kv-cache-type", choices=kv_types, default="f16")
    args = parser.parse_args()
    print(
        f"Predicted by the VRAM planner (not measured): Fathom-R1-14B at {args.n_ctx:,} tokens, "
        f"{args.kv_cache_type} KV cache, flash attention on; a card is assumed to have "
        f"{DESKTOP_USE_GIB} GiB in use by the desktop, and a plan uses at most 95% of the rest.\n"
    )
    print(table(args.config, args.n_ctx, args.kv_cache_type))


if __name__ == "__main__":
    main()
