"""The vLLM engine's stat logger, fed vLLM's real stats objects (no engine started)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm  # imports vLLM (tens of seconds on a busy machine)


class RecordingObserver:
    def __init__(self) -> None:
        self.waits: list[tuple[str, float]] = []
        self.steps: list[tuple[int, float]] = []

    def queue_wait(self, stage: str, seconds: float) -> None:
        self.waits.append((stage, seconds))

    def step(self, batch_size: int, seconds: float) -> None:
        self.steps.append((batch_size, seconds))


def _iteration(at: float, generated: int, prompt: tuple[int, int, int] = (0, 0, 0), finished_queued_s=()):
    from vllm.v1.engine import FinishReason
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats, PrefillStats

    stats = IterationStats()
    stats.iteration_timestamp = at
    stats.num_generation_tokens = generated
    total, computed, external = prompt
    if total:
        stats.prompt_token_stats.update_from_output(
            PrefillStats(num_prompt_tokens=total, num_computed_tokens=computed, num_cached_tokens=external,
                         num_external_cached_tokens=external)
        )
        stats.time_to_first_tokens_iter.append(0.05)
    stats.inter_token_latencies_iter.extend([0.01] * generated)
    stats.finished_requests.extend(
        FinishedRequestStats(finish_reason=FinishReason.LENGTH, queued_time=q) for q in finished_queued_s
    )
    return stats


def test_sink_folds_vllm_scheduler_and_iteration_stats_into_engine_stats():
    from vllm.v1.metrics.stats import SchedulerStats

    from workers.engines.vllm import _Counters, _stats_sink_factory

    counters, observer = _Counters(), RecordingObserver()
    sink = _stats_sink_factory(counters, observer, "decode")(None, 0)
    sink.record(SchedulerStats(num_running_reqs=2, num_waiting_reqs=1, num_skipped_waiting_reqs=1, kv_cache_usage=0.25),
                _iteration(100.0, 0, prompt=(130, 2, 128)))
    sink.record(SchedulerStats(num_running_reqs=2, kv_cache_usage=0.3), _iteration(100.02, 2))
    sink.record(SchedulerStats(num_running_reqs=0), _iteration(100.05, 2, finished_queued_s=(0.1, 0.2)))

    assert (counters.waiting, counters.running, counters.kv_used_fraction) == (0, 0, 0.0)
    assert counters.prompt_tokens_total == 130
    assert counters.prompt_tokens_computed_total == 2
    assert counters.prompt_tokens_kv_transferred_total == 128
    assert counters.generation_tokens_total == 4
    assert counters.ttft_count == 1 and counters.itl_count == 4
    assert counters.finished_requests_total == 2
    assert observer.waits == [("decode", 0.1), ("decode", 0.2)]
    # Step time is the gap between records while sequences run, reported with the batch size.
    assert [b for b, _ in observer.steps] == [2, 2]
    assert [round(s, 3) for _, s in observer.steps] == [0.02, 0.03]


def test_sink_reports_no_step_across_an_idle_gap():
    from vllm.v1.metrics.stats import SchedulerStats

    from workers.engines.vllm import _Counters, _stats_sink_factory

    counters, observer = _Counters(), RecordingObserver()
    sink = _stats_sink_factory(counters, observer, "prefill")(None, 0)
    sink.record(SchedulerStats(num_running_reqs=0), _iteration(10.0, 1))
    sink.record(SchedulerStats(num_running_reqs=1), _iteration(50.0, 1))  # 40 s idle before: not a step
    assert observer.steps == []
