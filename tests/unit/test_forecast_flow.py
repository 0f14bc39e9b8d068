"""The flow forecaster: joint sample paths, reproducible, saved and loaded exactly, updated online, fails loudly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoscaler.forecast import ForecastInputError, make_forecaster
from autoscaler.forecast.flow import FlowForecaster

STEP_S = 3600.0
TINY = dict(horizon=3, context=12, patch=6, seasons=1, pre=6, d_model=16, heads=2, layers=1, context_features=16,
            transforms=2, hidden_features=(32, 32), batch_size=64, max_epochs=4, patience=4, update_every_s=6 * 3600.0,
            update_steps=3, calibration_samples=16)


def correlated_series(rows: int = 600, seed: int = 0) -> np.ndarray:
    """Two indicators driven by one shock per step (log scale) plus a daily cycle."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    shock = 0.15 * rng.standard_normal(rows)
    level = np.log(100) + 0.3 * np.sin(2 * np.pi * t / 24)
    a = np.exp(level + shock + 0.02 * rng.standard_normal(rows))
    b = np.exp(level + np.log(3) + shock + 0.02 * rng.standard_normal(rows))
    return np.column_stack([a, b])


@pytest.fixture(scope="module")
def fitted() -> tuple[FlowForecaster, np.ndarray]:
    x = correlated_series()
    fc = make_forecaster("flow", indicators=("a", "b"), **TINY)
    fc.fit(x[:500], STEP_S)
    return fc, x


def test_flow_gives_nonnegative_joint_paths_of_the_requested_shape(fitted):
    fc, x = fitted
    out = fc.predict(x[:520], 2, 32, np.random.default_rng(0))
    assert out.samples.shape == (32, 2, 2)
    assert out.indicators == ("a", "b") and out.step_s == STEP_S
    assert np.all(np.isfinite(out.samples)) and np.all(out.samples >= 0)


def test_flow_sampling_is_reproducible_for_a_seed_and_leaves_torch_rng_alone(fitted):
    fc, x = fitted
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = fc.predict(x[:520], 3, 16, np.random.default_rng(7)).samples
    assert torch.rand(1) == expected_next
    b = fc.predict(x[:520], 3, 16, np.random.default_rng(7)).samples
    np.testing.assert_array_equal(a, b)


def test_flow_save_then_load_predicts_the_same_samples(fitted, tmp_path):
    fc, x = fitted
    fc.save(tmp_path / "flow.pt")
    loaded = FlowForecaster.load(tmp_path / "flow.pt")
    np.testing.assert_allclose(
        loaded.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        fc.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        rtol=1e-6,
    )
    assert loaded.temperature == fc.temperature and loaded.indicators == fc.indicators


def test_flow_fine_tunes_only_once_update_every_s_of_new_rows_arrived(tmp_path):
    x = correlated_series(seed=1)
    fc = make_forecaster("flow", **TINY)
    fc.fit(x[:500], STEP_S)
    before = [p.detach().clone() for p in fc.net.parameters()]
    fc.update(x[500:505])  # 5 h < 6 h: only appended
    assert all(torch.equal(a, b) for a, b in zip(before, fc.net.parameters()))
    assert fc.history.shape[0] == 505
    fc.update(x[505:506])  # 6 h reached: a few optimiser steps
    assert any(not torch.equal(a, b) for a, b in zip(before, fc.net.parameters()))


def test_flow_rejects_a_horizon_beyond_training_a_short_history_and_predict_before_fit(fitted):
    fc, x = fitted
    with pytest.raises(ForecastInputError, match="exceeds"):
        fc.predict(x[:520], 4, 8, np.random.default_rng(0))
    with pytest.raises(ForecastInputError, match="rows"):
        make_forecaster("flow", **TINY).fit(x[:40], STEP_S)
    with pytest.raises(ForecastInputError, match="fit"):
        make_forecaster("flow", **TINY).predict(x[:40], 1, 8, np.random.default_rng(0))


def test_flow_predicts_from_a_history_shorter_than_its_window(fitted):
    fc, x = fitted
    out = fc.predict(x[:3], 3, 8, np.random.default_rng(0))
    assert out.samples.shape == (8, 3, 2) and np.all(np.isfinite(out.samples))


@pytest.mark.slow
def test_flow_samples_carry_the_shock_shared_by_two_indicators():
    x = correlated_series(rows=900, seed=2)
    fc = make_forecaster("flow", **{**TINY, "max_epochs": 40, "patience": 10})
    fc.fit(x[:800], STEP_S)
    corr = []
    for end in range(800, 880, 8):
        s = np.log(fc.predict(x[:end], 1, 256, np.random.default_rng(end)).samples[:, 0])
        corr.append(np.corrcoef(s[:, 0], s[:, 1])[0, 1])
    assert np.mean(corr) > 0.6
