"""The capacity profiler's measurement and its CSV, on an engine whose timings are known by construction."""

from __future__ import annotations

import asyncio
import csv

import pytest

from workers.engines.base import EngineStats, Prefilled, SamplingParams
from workers.profiling import (PERF_COLUMNS, PerfRow, ProfileError, ProfilePlan, engine_timer, measure_run, profile_engine,
                               write_perf_csv)

from tests.conftest import SHARED_DATA

SPLITWISE_CSV = SHARED_DATA / "splitwise-perf" / "perf_model.csv"


class PacedEngine:
    """An engine that takes ``prefill_s_per_token`` per prompt token and ``step_s`` per decode step.

    It stands in for a model only where the profiler's arithmetic is under test: the times it
    should recover are known exactly. Real engines are profiled in tests/integration.
    """

    eos_token_id = None

    def __init__(self, prefill_s_per_token: float, step_s: float, stop_after: int | None = None) -> None:
        self.prefill_s_per_token = prefill_s_per_token
        self.step_s = step_s
        self.stop_after = stop_after

    async def prefill(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> Prefilled:
        await asyncio.sleep(self.prefill_s_per_token * len(prompt_ids))
        return Prefilled(request_id, tuple(prompt_ids), 7, None, 0, 0.0)

    async def decode(self, prefilled: Prefilled, sampling: SamplingParams):
        for _ in range(sampling.max_tokens - 1):
            await asyncio.sleep(self.step_s)
            yield 7

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams):
        prefilled = await self.prefill(request_id, prompt_ids, sampling)
        yield prefilled.first_token
        emitted = 1
        async for token in self.decode(prefilled, sampling):
            if self.stop_after is not None and emitted >= self.stop_after:
                return
            emitted += 1
            yield token

    def stats(self) -> EngineStats:
        return EngineStats()

    async def shutdown(self) -> None:
        pass


def _measure(engine, prompt_size, batch_size, token_size):
    import random

    return asyncio.run(
        measure_run(engine_timer(engine), prompt_size, batch_size, token_size, vocab_size=100, rng=random.Random(0), tag="t")
    )


def test_measure_run_recovers_known_prefill_and_step_times():
    engine = PacedEngine(prefill_s_per_token=0.001, step_s=0.02)
    prompt_ms, token_ms, e2e_ms = _measure(engine, prompt_size=64, batch_size=1, token_size=6)
    # Sleeps never end early; scheduling can only add delay.
    assert 64.0 <= prompt_ms < 64.0 * 1.5 + 20
    assert 20.0 <= token_ms < 20.0 * 1.5 + 10
    assert e2e_ms == pytest.approx(prompt_ms + 5 * token_ms, rel=1e-6)


def test_batch_prompt_time_waits_for_the_last_first_token():
    engine = PacedEngine(prefill_s_per_token=0.001, step_s=0.01)
    prompt_ms, _, _ = _measure(engine, prompt_size=50, batch_size=4, token_size=3)
    assert prompt_ms >= 50.0


def test_engine_that_stops_early_is_reported():
    with pytest.raises(ProfileError, match="produced 2 tokens, not 5"):
        _measure(PacedEngine(0.0, 0.0, stop_after=2), prompt_size=4, batch_size=1, token_size=5)


def test_plan_rejects_runs_longer_than_the_model():
    plan = ProfilePlan(prompt_sizes=(100, 500), token_size=32)
    with pytest.raises(ProfileError, match="532 tokens .* max_model_len is 512"):
        plan.check(max_model_len=512)


def test_plan_needs_two_tokens_to_time_a_step():
    with pytest.raises(ProfileError, match="token_size"):
        ProfilePlan(token_size=1).check(max_model_len=512)


def test_profile_rows_follow_the_plan_sweeps():
    plan = ProfilePlan(prompt_sizes=(8, 16), batch_sizes=(1, 3), batch_prompt_size=4, token_size=3, repeats=2, warmup_runs=0)
    rows = asyncio.run(
        profile_engine(PacedEngine(0.0001, 0.001), plan, model="m", hardware="cpu-test", tensor_parallel=2,
                       vocab_size=50, max_model_len=64)
    )
    assert [(r.prompt_size, r.batch_size) for r in rows] == [(8, 1), (8, 1), (16, 1), (16, 1), (4, 1), (4, 1), (4, 3), (4, 3)]
    assert all(r.model == "m" and r.hardware == "cpu-test" and r.tensor_parallel == 2 and r.token_size == 3 for r in rows)
    assert all(r.prompt_time > 0 and r.token_time > 0 and r.e2e_time >= r.prompt_time for r in rows)


class ColdShapeEngine(PacedEngine):
    """A PacedEngine whose first prefill of each prompt length costs ``cold_s`` more (a GPU's kernel selection)."""

    def __init__(self, cold_s: float) -> None:
        super().__init__(0.0, 0.0)
        self.cold_s, self.seen = cold_s, set()

    async def prefill(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> Prefilled:
        if len(prompt_ids) not in self.seen:
            self.seen.add(len(prompt_ids))
            await asyncio.sleep(self.cold_s)
        return await super().prefill(request_id, prompt_ids, sampling)


@pytest.mark.parametrize("warmup_runs", [0, 1])
def test_each_shape_is_warmed_before_it_is_timed(warmup_runs):
    plan = ProfilePlan(prompt_sizes=(8, 16), batch_sizes=(1,), batch_prompt_size=4, token_size=2, repeats=2,
                       warmup_runs=warmup_runs)
    rows = asyncio.run(profile_engine(ColdShapeEngine(cold_s=0.2), plan, model="m", hardware="h", tensor_parallel=1,
                                      vocab_size=50, max_model_len=64))
    cold = [r.prompt_time >= 200.0 for r in rows]
    # Without warm-up the first run of each of the three shapes carries the one-off cost; with it, none does.
    assert cold == ([True, False] * 3 if warmup_runs == 0 else [False] * 6)


class FakePower:
    """Thin fake of NVML (no GPU here): reports the length of each window it is asked about, in ms, as its peak."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []

    def window(self, start: float, end: float) -> tuple[float, float]:
        self.windows.append((start, end))
        return (end - start) * 1e3, 0.5

    def close(self) -> None:
        pass


def test_power_columns_come_from_the_sampler_over_each_timed_run():
    plan = ProfilePlan(prompt_sizes=(8,), batch_sizes=(2,), batch_prompt_size=4, token_size=3, repeats=2)
    power = FakePower()
    rows = asyncio.run(profile_engine(PacedEngine(0.001, 0.01), plan, model="m", hardware="h", tensor_parallel=1,
                                      vocab_size=50, max_model_len=64, power=power))
    assert len(power.windows) == len(rows) == 4, "one window per timed run, none for warm-ups"
    assert all(a < b <= c for (a, b), (c, _) in zip(power.windows, power.windows[1:]))
    for row in rows:
        # The window spans the run: at least its end-to-end time, at most that plus scheduling slack.
        assert row.e2e_time <= row.peak_power < row.e2e_time + 50 and row.average_power == 0.5


def test_without_a_sampler_power_is_not_measured():
    plan = ProfilePlan(prompt_sizes=(8,), batch_sizes=(1,), batch_prompt_size=4, token_size=2, repeats=1)
    rows = asyncio.run(profile_engine(PacedEngine(0.0, 0.0), plan, model="m", hardware="h", tensor_parallel=1,
                                      vocab_size=50, max_model_len=64))
    assert {(r.peak_power, r.average_power) for r in rows} == {(0.0, 0.0)}


def test_plan_rejects_negative_warmup():
    with pytest.raises(ProfileError, match="warmup_runs"):
        ProfilePlan(warmup_runs=-1).check(max_model_len=512)


def test_csv_header_is_exactly_splitwise_perf_model(tmp_path):
    if not SPLITWISE_CSV.is_file():
        pytest.fail(f"{SPLITWISE_CSV} is missing: the shared Splitwise data must sit beside the project")
    with SPLITWISE_CSV.open() as handle:
        splitwise_header = tuple(next(csv.reader(handle)))
    assert PERF_COLUMNS == splitwise_header
    row = PerfRow("tiny", "cpu-x86_64-2c", 32, 1, 16, 0.0, 0.0, 3.5, 1.25, 22.25, 1)
    path = write_perf_csv([row], tmp_path / "profile.csv")
    with path.open() as handle:
        header, values = list(csv.reader(handle))
    assert tuple(header) == splitwise_header
    assert values == ["tiny", "cpu-x86_64-2c", "32", "1", "16", "0.0", "0.0", "3.5", "1.25", "22.25", "1"]
