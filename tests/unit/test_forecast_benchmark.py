"""benchmarks/forecast.py's reading of issue 3's forecast targets from one run's scores."""

import pytest

from tests.conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("forecast")


def scores(names, flow_crps=22.9, coverage=0.83):
    out = {n: {"crps": 30.0} for n in names}
    out["seasonal_naive"] = {"crps": 76.0}
    out["quantile"] = {"crps": 22.87}
    out["flow"] = {"crps": flow_crps, "crps_vs_seasonal_naive": flow_crps / 76.0, "coverage_80": coverage}
    return out


def test_below_every_baseline_is_claimed_only_when_every_baseline_ran(bench):
    every = bench.targets(scores(bench.BASELINES))
    assert every == {"flow_crps_le_0.85x_seasonal_naive": True, "flow_crps_below_every_baseline": False,
                     "flow_coverage_80_in_75_85": True}
    assert bench.targets(scores(bench.BASELINES, flow_crps=22.8))["flow_crps_below_every_baseline"] is True
    # A run over two baselines (--forecasters seasonal_naive,quantile,flow) says which it beat, not "every".
    some = bench.targets(scores(("seasonal_naive", "quantile"), flow_crps=22.8, coverage=0.86))
    assert "flow_crps_below_every_baseline" not in some
    assert some["flow_crps_below_the_baselines_run"] is True
    assert some["baselines_run"] == ["seasonal_naive", "quantile"]
    assert some["flow_coverage_80_in_75_85"] is False


@pytest.mark.parametrize("argv, standard", [
    ([], True),
    (["--seed", "2", "--json", "results/forecast_seed2.json"], True),
    (["--forecasters", "seasonal_naive,quantile,flow"], False),
    (["--flow-epochs", "5"], False),
    (["--subsets", "0"], False),
    (["--train-days", "8", "--end-days", "10"], False),
])
def test_a_run_is_standard_only_with_the_documented_configuration(bench, argv, standard):
    parser = bench.build_parser()
    assert bench.standard_run(parser, parser.parse_args(argv)) is standard
