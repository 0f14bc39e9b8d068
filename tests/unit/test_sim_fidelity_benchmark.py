"""The simulator-fidelity benchmark's own arithmetic: the trace it replays and how it scores the simulator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoscaler.traces import RequestTrace
from tests.conftest import load_benchmark

fidelity = load_benchmark("sim_fidelity")


def test_scaled_slice_speeds_up_arrivals_and_scales_tokens_within_bounds():
    trace = RequestTrace("t", np.array([0.0, 10.0, 30.0, 59.0, 61.0]), np.array([4.0, 800.0, 80_000.0, 16.0, 8.0]),
                         np.array([1.0, 80.0, 8_000.0, 24.0, 8.0]))
    out = fidelity.scaled_slice(trace, speedup=2.0, duration_s=30.0, token_scale=8.0, max_prompt=1024, max_output=64)
    # The first 60 s of the trace, twice as fast: the request at 61 s is left out.
    np.testing.assert_array_equal(out.arrival_s, [0.0, 5.0, 15.0, 29.5])
    np.testing.assert_array_equal(out.prompt_tokens, [1, 100, 1024, 2])  # at least 1, at most max_prompt
    np.testing.assert_array_equal(out.output_tokens, [2, 10, 64, 3])  # at least 2 (TPOT needs two tokens)
    assert out.name == "t x2"


def test_compare_reports_ratios_errors_and_shares_within_live_quantiles():
    live = np.linspace(0.01, 0.1, 100)
    twice = fidelity.compare(live, 2 * live)
    assert twice["sim_over_live_p50"] == pytest.approx(2.0)
    assert twice["median_abs_log_error"] == pytest.approx(np.log(2.0))
    # 2 x live <= live median 0.055 for live <= 0.0275: (0.0275 - 0.01) / 0.09 of the requests
    assert twice["sim_within_live_p50"] == pytest.approx(0.194, abs=0.01)
    same = fidelity.compare(live, live.copy())
    assert same["median_abs_log_error"] == 0.0
    assert same["sim_within_live_p90"] == pytest.approx(0.9, abs=0.02)
    assert same["live_p99_ms"] == pytest.approx(np.quantile(live, 0.99) * 1e3)


def test_each_run_keeps_its_profiles_beside_its_own_json():
    default = fidelity.profile_paths(Path("results/sim_fidelity.json"))
    assert default == {"engine profile": Path("results/sim_fidelity_engine_profile.csv"),
                       "served profile": Path("results/sim_fidelity_served_profile.csv")}
    other = fidelity.profile_paths(Path("out/sim_fidelity_ts2.json"))
    assert set(other.values()).isdisjoint(default.values())
    assert other["served profile"] == Path("out/sim_fidelity_ts2_served_profile.csv")
