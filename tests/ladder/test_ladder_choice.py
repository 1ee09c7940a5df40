"""The best level that fits: the rule the app starts with and the first run recommends by."""

from __future__ import annotations

from pathlib import Path

from fathom_desktop.ladder_choice import LevelOption, best_level
from fathom_desktop.model_ladder import LADDER_RANK

N_LAYERS = 49


def level(quant: str, kld: float | None, on_gpu: int = N_LAYERS) -> LevelOption:
    return LevelOption(
        path=Path(f"/models/Fathom-R1-14B-{quant}.gguf"),
        quant=quant,
        ladder_rank=LADDER_RANK[quant],
        kld=kld,
        n_gpu_layers=on_gpu,
        n_layers=N_LAYERS,
    )


def test_the_lowest_kld_among_the_levels_that_fit_fully() -> None:
    choice = best_level(
        [
            level("Q8_0", 0.0005, on_gpu=28),  # the best, but only partly on the GPU
            level("Q6_K", 0.0021),
            level("Q4_K_M", 0.0150),
            level("Q2_K", 0.1100),
        ]
    )
    assert choice is not None and choice.option.quant == "Q6_K"
    assert "KLD 0.0021" in choice.reason and "fit fully on the GPU" in choice.reason


def test_measurements_overrule_the_ladder_order() -> None:
    # On some models a smaller level measures better than the one above it (IQ4_XS vs Q3_K_M on
    # the demo): the numbers decide, not the ladder.
    choice = best_level([level("IQ4_XS", 0.054), level("Q3_K_M", 0.042)])
    assert choice is not None and choice.option.quant == "Q3_K_M"


def test_without_every_measurement_the_ladder_order_decides() -> None:
    choice = best_level([level("Q4_K_M", 0.015), level("Q6_K", None), level("Q2_K", 0.11)])
    assert choice is not None and choice.option.quant == "Q6_K"
    assert "not all of them are measured" in choice.reason


def test_when_nothing_fits_the_level_closest_to_fitting() -> None:
    choice = best_level(
        [
            level("Q8_0", 0.0005, on_gpu=17),
            level("Q4_K_M", 0.015, on_gpu=26),
            level("Q2_K", 0.11, on_gpu=36),
        ]
    )
    assert choice is not None and choice.option.quant == "Q2_K"
    assert "36/49" in choice.reason and "no level fits fully" in choice.reason


def test_ties_in_layers_go_to_the_lower_kld() -> None:
    choice = best_level([level("Q3_K_M", 0.05, on_gpu=30), level("IQ4_XS", 0.03, on_gpu=30)])
    assert choice is not None and choice.option.quant == "IQ4_XS"


def test_without_a_usable_gpu_the_level_that_loses_least_runs_on_the_cpu() -> None:
    options = [level("Q8_0", 0.0005, on_gpu=0), level("Q4_K_M", 0.015, on_gpu=0)]
    choice = best_level(options, gpu_usable=False)
    assert choice is not None and choice.option.quant == "Q8_0"
    assert "no GPU" in choice.reason


def test_no_levels_no_choice() -> None:
    assert best_level([]) is None
