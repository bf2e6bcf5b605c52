"""Intervals over seeds and the sentences generated from them."""

import math

import numpy as np
import pytest
from scipy import stats

from embtab.experiments.intervals import (
    ci_text,
    direction_sentence,
    interval,
    spec_apart,
    student_t_975,
    summary_with_intervals,
)
from embtab.experiments.report import ci_cell


@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 30, 31, 45, 100, 1000])
def test_student_t_matches_scipy(df):
    assert student_t_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)


def test_student_t_rejects_bad_df():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="df"):
            student_t_975(bad)


def test_interval_hand_worked_and_against_scipy():
    # values 1, 2, 3: mean 2, sd 1, half-width t(2) * 1 / sqrt(3) = 4.302653 / 1.732051
    r = interval([1.0, 2.0, 3.0])
    assert (r["n"], r["mean"], r["sd"]) == (3, 2.0, 1.0)
    assert r["ci95_high"] == pytest.approx(2 + 4.302652730 / math.sqrt(3))
    x = np.random.default_rng(0).normal(size=7)
    lo, hi = stats.t.interval(0.95, 6, loc=x.mean(), scale=stats.sem(x))
    r = interval(x)
    assert (r["ci95_low"], r["ci95_high"]) == (pytest.approx(lo), pytest.approx(hi))
    one = interval([5.0, None, float("nan")])
    assert one["n"] == 1 and one["mean"] == 5.0 and math.isnan(one["ci95_low"])
    assert interval([])["n"] == 0


def test_summary_groups_rows_and_skips_non_numbers():
    rows = [{"model": "mf", "dim": 2, "seed": s, "x": float(s), "tag": "a", "l": [1, 2]}
            for s in range(3)]
    rows += [{"model": "oracle", "seed": s, "x": 1.0} for s in range(2)]
    out = summary_with_intervals(rows, keys=("model", "dim"))
    assert [(e["model"], e.get("dim"), e["n"]) for e in out] == [("mf", 2, 3), ("oracle", None, 2)]
    assert set(out[0]) == {"model", "dim", "n", "x"}
    assert out[0]["x"]["mean"] == 1.0 and out[1]["x"]["sd"] == 0.0


def test_direction_sentence_states_a_direction_only_outside_zero():
    up = {"mean": 0.02, "ci95_low": 0.005, "ci95_high": 0.035, "n": 5}
    down = {"mean": -0.02, "ci95_low": -0.035, "ci95_high": -0.005, "n": 5}
    across = {"mean": 0.02, "ci95_low": -0.001, "ci95_high": 0.041, "n": 5}
    args = ("The lists", "are more popular", "are less popular")
    assert direction_sentence(up, *args, metric="m").startswith("The lists are more popular (m")
    assert direction_sentence(down, *args, metric="m").startswith("The lists are less popular")
    s = direction_sentence(across, *args, metric="m")
    assert "no clear direction" in s and "more popular" not in s and "includes 0" in s
    single = {"mean": 0.02, "ci95_low": float("nan"), "ci95_high": float("nan"), "n": 1}
    assert "no clear direction" in direction_sentence(single, *args)
    # generated from real intervals: three clearly positive values, then three around 0
    assert "more popular" in direction_sentence(interval([0.1, 0.11, 0.12]), *args)
    assert "no clear direction" in direction_sentence(interval([0.1, -0.1, 0.02]), *args)


def test_ci95_half_width_and_report_cells_match_interval():
    from embtab.experiments.intervals import ci95_half_width
    from embtab.experiments.report import ci_cell
    from embtab.experiments.results import mean_sd

    values = [0.21, 0.25, 0.19, 0.3, 0.22]
    ref = interval(values)
    m, sd = mean_sd(values)
    half = ci95_half_width(sd, len(values))
    assert half == pytest.approx(ref["ci95_high"] - ref["mean"], rel=1e-12)
    assert ci_cell(m, sd, len(values)) == (f"{ref['mean']:.4f} [{ref['ci95_low']:.4f}, "
                                           f"{ref['ci95_high']:.4f}]")
    # one seed: no interval, the mean alone; a missing mean is a dash
    assert ci_cell(0.5, 0.0, 1) == "0.5000"
    assert math.isnan(ci95_half_width(0.1, 1))
    assert ci_cell(float("nan"), 0.1, 3) == "–"
    # the same value on every seed: no interval, as interval() and the sentences say
    m, sd = mean_sd([1.0, 1.0, 1.0])
    assert math.isnan(interval([1.0, 1.0, 1.0])["ci95_low"])
    assert ci_cell(m, sd, 3) == "1.0000 (no spread)" and ci_cell(0.0, 0.0, 3) == "0.0000 (no spread)"
    # per column (arrays of deciles)
    np.testing.assert_allclose(ci95_half_width(np.array([1.0, 2.0]), 3),
                               [stats.t.ppf(0.975, 2) / math.sqrt(3) * x for x in (1, 2)])
    with pytest.raises(ValueError, match="n must be an integer"):
        ci95_half_width(0.1, 2.5)


@pytest.mark.parametrize("values", [
    [0.1, 0.3, float("nan"), float("nan")],
    [4.6, float("nan"), float("nan"), float("nan")],   # printed "(no spread)" over 4 seeds
    [0.2, 0.25, 0.3, float("nan"), 0.21],
])
def test_table_cells_count_only_the_seeds_a_metric_is_defined_on(values):
    # Oracle: interval() over the finite values (what the JSON summary records); the table
    # cell must show that interval, or the mean alone for one value, and say how many of the
    # configuration's seeds it comes from.
    from embtab.experiments.report import table
    from embtab.experiments.results import seeds_of, summarize

    rows = [{"model": "mf", "dim": 8, "seed": s, "m": v} for s, v in enumerate(values)]
    (row,) = summarize({"rows": rows})
    finite = [v for v in values if math.isfinite(v)]
    assert row["n"] == len(values) and seeds_of(row, "m") == len(finite)
    ref = interval(finite)
    cell = table([row], [("model", lambda r: r["model"])], metrics_=("m",))[2].split("|")[2].strip()
    tail = f" ({len(finite)} of {len(values)} seeds)"
    if len(finite) >= 2:
        assert cell == f"{ref['mean']:.4f} [{ref['ci95_low']:.4f}, {ref['ci95_high']:.4f}]" + tail
    else:
        assert cell == f"{ref['mean']:.4f}" + tail and "spread" not in cell


def test_a_value_the_same_on_every_seed_gets_no_interval_and_no_direction():
    # two seeds that agree exactly gave [x, x], and a sentence named a direction from it (a
    # review found "consume less alike ... 95% CI [-0.0263, -0.0263]" from a metric that was
    # 1/38 and 0 on both seeds); rounding noise counts as agreeing
    from embtab.experiments.intervals import direction_sentence, interval
    for vals in ([-0.0263, -0.0263], [0.0, 0.0, 0.0], [-0.0623, -0.0623 + 2e-17]):
        r = interval(vals)
        assert r["n"] == len(vals) and r["sd"] == 0.0
        assert math.isnan(r["ci95_low"]) and math.isnan(r["ci95_high"])
        text = direction_sentence(r, "The lists", "are up", "are down")
        assert "no clear direction" in text and "no spread" in text
    r = interval([0.1, 0.1000001])   # a real spread, however small, keeps its interval
    assert r["sd"] > 0 and r["ci95_low"] < 0.1 < r["ci95_high"]


def test_e3_percent_text_tells_no_spread_from_too_few_seeds():
    # interval() of equal values has no bounds, as of a single value; the E3 sentence must
    # not say "no interval from 2 seeds" of two seeds that agree exactly
    from embtab.experiments.calibration import _ci_pct

    same = _ci_pct(interval([1.0, 1.0]))
    assert "no spread" in same and "no interval" not in same
    one = _ci_pct(interval([1.0]))
    assert "no interval from 1 seed" in one and "spread" not in one
    assert "[" in _ci_pct(interval([0.5, 0.6, 0.7]))


def test_rounding_noise_is_no_spread_and_tiny_effects_keep_their_digits():
    """Differences of ~1e-17 (two sums of the same terms in another order) are no spread, even
    when they share a sign; a real effect of 2e-5 is stated with significant digits, not as a
    [0.0000, 0.0000] interval."""
    noise = interval([1.1e-17, 2.2e-17, 1.6e-17])
    assert noise["sd"] == 0.0 and math.isnan(noise["ci95_low"])
    assert "no clear direction" in direction_sentence(noise, "X", "rises", "falls", metric="d")
    small = direction_sentence(interval([2e-5, 3e-5, 2.5e-5]), "X", "rises", "falls", metric="d")
    assert small.startswith("X rises (d = 2.50e-05, 95% CI [1.26e-05, 3.74e-05]"), small
    # ordinary magnitudes still print with 4 decimals
    assert "0.1100" in direction_sentence(interval([0.1, 0.12]), "X", "rises", "falls")


def test_sections_render_from_results_reloaded_from_json():
    """A contrast with no spread is saved with null bounds; the budget section and the post-hoc
    contrasts read a reloaded file as they read the results in memory."""
    import json

    from embtab.experiments import budget, posthoc
    from embtab.experiments.results import jsonable

    rows = [{"model": "mf", "seed": s, "budget": 1.0, "design": d, "recall@10": v,
             "ndcg@10": v, "excess_arp@10": 0.01}
            for s in range(3) for d, v in (("cuckoo", 0.2), ("hashed", 0.1))]
    res = {"experiment": "budget", "rows": rows, "contrasts": budget.contrasts(rows),
           "summary": []}
    fresh = budget.findings(res)
    assert budget.findings(json.loads(json.dumps(jsonable(res)))) == fresh
    assert "no interval" in fresh[0]
    prow = [{"model": "mf+popcal", "seed": 0, "dim": d, "lam": lam, "recall@10": 0.1,
             "ndcg@10": 0.1, "excess_arp@10": v}
            for d in (2, 16) for lam in (0.0, 0.5) for v in [float("nan") if d == 2 else 0.0]]
    as_null = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
               for r in prow]
    a, b = posthoc.contrasts(prow, 2, 16), posthoc.contrasts(as_null, 2, 16)
    assert json.dumps(jsonable(a), sort_keys=True) == json.dumps(jsonable(b), sort_keys=True)


def test_table_cells_star_only_quantities_that_can_be_negative():
    # A review found "*" (the interval excludes 0) on recall, coverage and arp, which are
    # never negative, and "(no spread)" in one table but a bare mean in another.
    from embtab.experiments.dims import fmt_ci
    from embtab.experiments.intervals import interval, is_signed

    above = interval([0.2, 0.3, 0.25])
    assert fmt_ci(above, metric="excess_arp@10").endswith("]*")
    assert fmt_ci(above, metric="delta_gap@10:niche").endswith("]*")
    assert fmt_ci(above, metric="exposure_diff").endswith("]*")
    for m in ("recall@10", "coverage@10", "arp@10", "tail_share@10", "sharing_share"):
        assert not is_signed(m) and fmt_ci(above, metric=m).endswith("]"), m
    assert fmt_ci(interval([0.5, 0.5, 0.5]), metric="recall@10") == "0.500 (no spread)"
    assert fmt_ci(interval([0.5]), metric="recall@10") == "0.500"
    assert fmt_ci(None) == "–"


def test_a_bound_that_decides_a_claim_never_prints_as_the_value_it_excludes():
    # review: a starred table cell printed "0.001 [0.000, 0.001]*", a budget sentence
    # "difference +0.0000 [+0.0000, +0.0001], so cuckoo wins", a trade-off verdict
    # "50% [50%, 51%] ... the target (≤ 50%) is missed"
    from embtab.experiments import budget, calibration, dims

    assert spec_apart(".3f", 0.0003) == ".4f" and spec_apart("+.4f", -2e-5) == "+.5f"
    assert spec_apart(".0%", 0.5004, 0.5) == ".2%" and spec_apart(".3f", 0.25) == ".3f"
    assert spec_apart(".3e", 1e-9) == ".3e"   # not a fixed-point spec: unchanged
    st = interval([0.0006, 0.0008, 0.0010])   # low bound 0.00030
    assert 0 < st["ci95_low"] < 0.0005
    assert dims.fmt_ci(st, metric="excess_arp@10") == "0.0008 [0.0003, 0.0013]*"
    assert ci_text(st, ".3f") == "0.001 [0.000, 0.001]"   # no claim asked: as given
    assert ci_text(interval([-0.0006, -0.0008, -0.0010]), ".3f", ref=0.0) == \
        "-0.0008 [-0.0013, -0.0003]"
    for metric, diff in (("recall@10", interval([3e-5, 4e-5, 5e-5])),
                         ("|excess_arp@10|", interval([-3e-5, -4e-5, -5e-5]))):
        text = budget.findings({"contrasts": [{"budget": 1.0, "metric": metric, "best": "cuckoo",
                                               "runner_up": "hashed", "difference": diff}],
                                "summary": []})[0]
        assert "cuckoo wins" in text, text
        assert "[+0.0000," not in text and "-0.0000]" not in text, text
        assert "[+0.00002, +0.00006]" in text or "[-0.00006, -0.00002]" in text, text

    def rows(ratios, ndcg_ratios):
        out = []
        for s, (r, n) in enumerate(zip(ratios, ndcg_ratios)):
            out += [{"model": "mf+calibrated", "candidates": 100, "lam": lam, "seed": s,
                     "miscalibration@10": m, "ndcg@10": 0.2 * g}
                    for lam, m, g in ((0.0, 1.0, 1.0), (0.5, r, n))]
        return {"rows": out}

    text = calibration.tradeoff_findings(rows([0.5035, 0.5045, 0.5055], [0.99, 0.98, 0.97]))[0]
    assert "is missed" in text and "[50%," not in text and "[50.2%," in text, text
    text = calibration.tradeoff_findings(rows([0.40, 0.42, 0.44], [0.8996, 0.8997, 0.8998]))[0]
    assert "is missed" in text and "−10.0%]" not in text and "-10.0%]" not in text, text


def test_report_cells_and_intervals_agree_on_no_spread():
    # review: interval() and report.ci_cell used different "no spread" thresholds, so one
    # metric read "(no spread)" in a sentence and "0.0010 [0.0010, 0.0010]" in a table
    for values in ([1e-3, 1e-3 + 2e-14, 1e-3 - 2e-14], [1e-13, -1e-13, 0.0]):
        st = interval(values)
        assert st["sd"] == 0.0
        sd = float(np.std(values, ddof=1))
        assert ci_cell(float(np.mean(values)), sd, 3).endswith("(no spread)")


def test_an_unbounded_interval_is_named_as_such():
    st = interval([-1e308, 1e308])
    assert st["ci95_low"] == -math.inf
    assert "95% CI unbounded" in direction_sentence(st, "X", "up", "down")
