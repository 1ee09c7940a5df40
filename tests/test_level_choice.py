"""The best level that fits: lowest loss among full fits, else among partial fits, else the CPU."""

from __future__ import annotations

from fathom_desktop.level_choice import Fit, LevelFacts, best_level

GIB = 2**30


def level(name: str, gib: float, fit: Fit, kld: float | None = None, **kw) -> LevelFacts:
    return LevelFacts(name, int(gib * GIB), fit, kld, **kw)


def test_the_least_lossy_full_fit_wins_over_a_better_partial_one() -> None:
    chosen = best_level(
        [
            level("Q8_0", 14.6, Fit.PARTIAL, 0.001, fit_label="partial: 30/49 layers"),
            level("Q6_K", 11.3, Fit.PARTIAL, 0.004, fit_label="partial: 38/49 layers"),
            level("Q4_K_M", 8.4, Fit.FULL, 0.021, top1=0.953),
            level("Q3_K_M", 6.7, Fit.FULL, 0.061, top1=0.912),
        ]
    )
    assert chosen is not None and chosen.level.name == "Q4_K_M"
    assert chosen.reason == (
        "Q4_K_M (8.4 GiB): the least quality lost of the levels that fit fully on the GPU "
        "(95.3 % same top token as BF16, KLD 0.0210)."
    )


def test_measured_loss_decides_even_against_size() -> None:
    # An IQ level can lose less than a larger K level: the measurement, not the size, decides.
    chosen = best_level(
        [level("Q4_K_M", 8.4, Fit.FULL, 0.030), level("IQ4_XS", 7.6, Fit.FULL, 0.025)]
    )
    assert chosen is not None and chosen.level.name == "IQ4_XS"


def test_unmeasured_levels_are_ranked_by_size_and_the_reason_says_so() -> None:
    chosen = best_level(
        [
            level("Q6_K", 11.3, Fit.FULL),
            level("Q4_K_M", 8.4, Fit.FULL, 0.021),
            level("Q8_0", 14.6, Fit.PARTIAL),
        ]
    )
    assert chosen is not None and chosen.level.name == "Q6_K"
    assert chosen.reason == (
        "Q6_K (11.3 GiB): the largest, so least lossy, level that fits fully on the GPU "
        "(quality not measured yet)."
    )


def test_with_no_full_fit_the_least_lossy_level_mostly_on_the_gpu_is_chosen() -> None:
    # Q8_0 loses least but would run mostly on the CPU: not recommended.
    chosen = best_level(
        [
            level("Q8_0", 14.6, Fit.PARTIAL, 0.001, fit_label="partial: 17/49 layers"),
            level("Q4_K_M", 8.4, Fit.PARTIAL, 0.021, fit_label="partial: 40/49 layers"),
            level("Q3_K_M", 6.7, Fit.PARTIAL, 0.061, fit_label="partial: 46/49 layers"),
        ]
    )
    assert chosen is not None and chosen.level.name == "Q4_K_M"
    assert chosen.reason == (
        "Q4_K_M (8.4 GiB): none fits fully on the GPU; the least quality lost of those with at "
        "least half their layers on it (KLD 0.0210; partial: 40/49 layers)."
    )


def test_when_none_fits_half_way_the_one_with_most_layers_on_the_gpu() -> None:
    chosen = best_level(
        [
            level("Q8_0", 14.6, Fit.PARTIAL, fit_label="partial: 9/49 layers"),
            level("Q2_K", 5.4, Fit.PARTIAL, fit_label="partial: 20/49 layers"),
        ]
    )
    assert chosen is not None and chosen.level.name == "Q2_K"
    assert chosen.reason == (
        "Q2_K (5.4 GiB): none fits on the GPU even half-way; this one puts the most layers on it "
        "(partial: 20/49 layers)."
    )


def test_on_the_cpu_the_best_level_that_fits_in_memory() -> None:
    levels = [
        level("Q8_0", 14.6, Fit.NONE),
        level("Q6_K", 11.3, Fit.NONE),
        level("Q4_K_M", 8.4, Fit.NONE),
    ]
    chosen = best_level(levels, host_bytes=16 * GIB)  # 12.8 GiB usable
    assert chosen is not None and chosen.level.name == "Q6_K"
    assert "fits in memory on the CPU" in chosen.reason
    tight = best_level(levels, host_bytes=4 * GIB)
    assert tight is not None and tight.level.name == "Q4_K_M"
    assert tight.reason == "Q4_K_M: the smallest level; none fits comfortably in memory."


def test_nothing_to_choose_from() -> None:
    assert best_level([]) is None


def test_fit_badges_read_as_fits() -> None:
    assert Fit.from_label("fits on GPU") is Fit.FULL
    assert Fit.from_label("partial: 31/49 layers") is Fit.PARTIAL
    assert Fit.from_label("CPU only") is Fit.NONE
