"""benchmarks/forecast.py's reading of issue 3's forecast targets from one run's scores."""

import re

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
    (["--flow-config", "blend_weight=0.25"], False),
])
def test_a_run_is_standard_only_with_the_documented_configuration(bench, argv, standard):
    parser = bench.build_parser()
    assert bench.standard_run(parser, parser.parse_args(argv)) is standard


def test_flow_config_overrides_are_read_as_json_fields(bench):
    argv = ["--flow-config", "blend_weight=0.5", "--flow-config", "hidden_features=[64, 64]"]
    args = bench.build_parser().parse_args(argv)
    assert bench.flow_overrides(args.flow_config) == {"blend_weight": 0.5, "hidden_features": [64, 64]}
    assert bench.flow_overrides(None) == {}


@pytest.mark.parametrize("item, names", [
    ("blend_weight", "FIELD=VALUE"),
    ("seed=1", "use --seed"),
    ("max_epochs=5", "use --flow-epochs"),
    ("nope=1", "not a FlowConfig field"),
    ("dropout=x", "not JSON"),
    ('dropout="0.1"', "dropout must be a number"),
    ("bins=true", "bins must be a number"),
    ("hidden_features=3", "hidden_features must be a list"),
    ("blend_weight=2", "blend_weight must lie in [0, 1]"),
])
def test_a_bad_flow_config_is_refused_naming_the_problem(bench, item, names, capsys):
    with pytest.raises(bench.ForecastInputError, match=re.escape(names)):
        bench.flow_overrides([item])
    # The command refuses it first, before it looks for the data.
    assert bench.main(["--flow-config", item, "--data", "/nonexistent"]) == 2
    assert names in capsys.readouterr().err
