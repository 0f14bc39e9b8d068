"""Trace loaders: Azure per-request CSVs and ServeGen per-client windows, with clear errors."""

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from autoscaler import traces
from autoscaler.indicators import ClusterIndicators, IndicatorError, IndicatorSeries
from autoscaler.traces import TraceError, load_azure_csv, load_servegen, load_trace

from tests.conftest import SHARED_DATA, needs_data

AZURE_CODE = SHARED_DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _azure(tmp_path: Path, rows: list[str], name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "".join(f"{row}\n" for row in rows))
    return path


def _write_client(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / name).write_text("\n".join(rows) + "\n")


@needs_data(AZURE_CODE)
def test_azure_code_trace_loads_every_request_in_arrival_order():
    trace = load_azure_csv(AZURE_CODE)
    assert trace.arrival_s.size == 8819 and trace.arrival_s[0] == 0.0
    assert np.all(np.diff(trace.arrival_s) >= 0)
    ticks = trace.to_ticks(1.0)
    assert ticks.n_requests.sum() == 8819
    assert ticks.prompt_tokens.sum() == pytest.approx(trace.prompt_tokens.sum())


def test_azure_csv_with_extra_spaces_and_a_bad_row_is_refused_with_the_row(tmp_path):
    good = tmp_path / "good.csv"
    good.write_text("TIMESTAMP, ContextTokens, GeneratedTokens\n2023-11-16 18:17:03.98,100,10\n"
                    "2023-11-16 18:17:05.48,50,5\n")
    trace = load_azure_csv(good)
    assert trace.arrival_s.tolist() == pytest.approx([0.0, 1.5])
    bad = tmp_path / "bad.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.98,100,10\nnot-a-time,5,5\n")
    with pytest.raises(TraceError, match=r"malformed rows \(first at data row 2: TIMESTAMP 'not-a-time' is not a date"):
        load_azure_csv(bad)
    negative = tmp_path / "negative.csv"
    negative.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.98,-3,x\n")
    with pytest.raises(TraceError, match="ContextTokens '-3' is not a non-negative number; GeneratedTokens 'x'"):
        load_azure_csv(negative)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    with pytest.raises(TraceError, match="lacks columns"):
        load_azure_csv(wrong)
    with pytest.raises(TraceError, match="does not exist"):
        load_trace(tmp_path / "nope.csv", 1.0)


def test_azure_2024_timestamps_with_utc_offsets_are_read_as_utc(tmp_path):
    # The 2024 traces' format, ISO with Z, and a row at +02:00: 02:00:03 there is 00:00:03 UTC.
    trace = tmp_path / "azure-2024.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,100,10\n"
                     "2024-05-10 00:00:01.509930+00:00,50,5\n2024-05-10T02:00:03.009930+02:00,50,5\n"
                     "2024-05-10T00:00:04.5Z,50,5\n")
    assert load_azure_csv(trace).arrival_s.tolist() == pytest.approx([0.0, 1.5, 3.0, 4.49007])
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2024-05-10 00:00:00.009930+00:00,100,10\n"
                     "2024-05-10 25:00:00+00:00,50,5\n")
    with pytest.raises(TraceError, match="data row 2: TIMESTAMP '2024-05-10 25:00:00\\+00:00' is not a date/time"):
        load_azure_csv(trace)


def test_a_numeric_timestamp_column_is_seconds_from_the_first_request(tmp_path):
    rows = "".join(f"{t},100,10\n" for t in range(20))
    relative, epoch = tmp_path / "relative.csv", tmp_path / "epoch.csv"
    relative.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    epoch.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{1.7e9 + t},100,10\n" for t in range(20)))
    for path in (relative, epoch):
        ticks = load_azure_csv(path).to_ticks(1.0)
        assert ticks.n_requests.tolist() == [1.0] * 20  # 20 requests over 19 s: one a tick
    for tick in (0.0, float("nan")):
        with pytest.raises(TraceError, match="step_s must be a finite number > 0"):
            load_azure_csv(relative).to_ticks(tick)
    relative.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n1.5,100,10\nsoon,100,10\n")
    with pytest.raises(TraceError, match="data row 3: TIMESTAMP 'soon' is not a number of seconds"):
        load_azure_csv(relative)


def test_servegen_arrivals_honour_each_window_rate_and_are_seeded(tmp_path):
    # 20 windows of each law, so that their mean rate is tight: over 30 seeds 3.00 req/s (sd 0.019)
    # for the two Gamma clients and 5.01 (sd 0.056) for the Weibull one, and the bounds are 3+ sd.
    # Keeping the fitted Gamma scale instead of rescaling the gaps to the window's rate gives 3.27.
    folder = tmp_path / "sg"
    _write_client(folder, "chunk-0-trace.csv", [f"{600 * w},2.0,1.5,Gamma,0.44,1.0" for w in range(20)]
                  + ["12000,0,0,,0,0"] + [f"{600 * w},5.0,3,Weibull,0.4,1.0" for w in range(21, 41)])
    _write_client(folder, "chunk-1-trace.csv", [f"{600 * w},1.0,1.0,Gamma,1.0,1.0" for w in range(20)])
    a = load_servegen(folder, step_s=10, seed=3)
    b = load_servegen(folder, step_s=10, seed=3)
    c = load_servegen(folder, step_s=10, seed=4)
    assert np.array_equal(a.n_requests, b.n_requests) and not np.array_equal(a.n_requests, c.n_requests)
    per_window = a.n_requests.reshape(-1, 60).sum(axis=1) / 600
    assert per_window[:20].mean() == pytest.approx(3.0, abs=0.06)
    assert per_window[20] == 0
    assert per_window[21:].mean() == pytest.approx(5.0, abs=0.2)
    assert a.groups.weight.sum() == pytest.approx(a.n_requests.sum())


def test_servegen_cache_returns_the_same_trace(tmp_path):
    folder = tmp_path / "sg"
    _write_client(folder, "chunk-0-trace.csv", ["0,2.0,1.5,Gamma,0.44,1.0"])
    first = load_servegen(folder, seed=1, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again = load_servegen(folder, seed=1, cache_dir=tmp_path / "cache")
    assert np.array_equal(first.n_requests, again.n_requests)
    assert np.array_equal(first.prompt_tokens, again.prompt_tokens)


def test_servegen_folders_of_the_same_name_and_file_sizes_and_times_do_not_share_a_cache_entry(tmp_path):
    first, second = tmp_path / "a" / "sg", tmp_path / "b" / "sg"
    for folder, rate in ((first, "2.0"), (second, "3.0")):  # same length, same mtime
        folder.parent.mkdir()
        _write_client(folder, "chunk-0-trace.csv", [f"0,{rate},1.5,Gamma,0.44,1.0"])
        os.utime(folder / "chunk-0-trace.csv", ns=(1_700_000_000_000_000_000,) * 2)
    a = load_servegen(first, seed=1, cache_dir=tmp_path / "cache")
    b = load_servegen(second, seed=1, cache_dir=tmp_path / "cache")
    assert a.n_requests.sum() < 1500 < b.n_requests.sum()  # 1,200 and 1,800 expected
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_servegen_errors_name_the_file(tmp_path):
    with pytest.raises(TraceError, match="does not exist"):
        load_servegen(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="no chunk"):
        load_servegen(tmp_path / "empty")
    folder = tmp_path / "bad"
    _write_client(folder, "chunk-0-trace.csv", ["0,2.0,1.5,Pareto,0.44,1.0"])
    with pytest.raises(TraceError, match="chunk-0-trace.csv.*unknown distribution"):
        load_servegen(folder)
    _write_client(folder, "chunk-0-trace.csv", ["0,2.0,1.5,Gamma,0.44,1.0", "600,abc,1.5,Gamma,0.44,1.0"])
    with pytest.raises(TraceError, match=r"non-negative numbers \(row 2: rate 'abc'\)"):
        load_servegen(folder)


@pytest.mark.parametrize("rows, error", [
    ([], "holds no windows"),  # a 0-byte file
    (["0,inf,1.5,Gamma,0.44,1.0"], r"finite non-negative numbers \(row 1: rate 'inf'\)"),
    (["0,2.0,1.5,Gamma,0.44"], r"\(row 1: scale missing\)"),
    (["0,2.0,1.5,Gamma,0.44,1.0,7"], "rows have more than the 6 fields ts, rate, cv, dist, shape, scale"),
    (["1e9,2.0,1.5,Gamma,0.44,1.0"], r"ts 1e\+09 at row 1 is beyond 3.16224e\+07 s"),
    (["0,20000,1.5,Gamma,0.44,1.0"], "rate 20000 at row 1 is beyond 10000 req/s"),
    (["0,1.0,1.0,Gamma,1e-9,1.0"], r"window at ts 0 \(Gamma shape 1e-09, rate 1\) does not cover its 600 s in \d+ draws"),
    (["0,1.0,1.0,Weibull,0.001,1.0"], "a Weibull window has a shape below 0.05"),
    (["0,0,0,,0,0", "600,0,0,,0,0"], "holds no requests"),
])
def test_servegen_windows_that_cannot_be_synthesised_are_refused_naming_the_file(tmp_path, rows, error):
    folder = tmp_path / "sg"
    folder.mkdir()
    (folder / "chunk-0-trace.csv").write_text("".join(f"{row}\n" for row in rows))
    with pytest.raises(TraceError, match=error) as raised:
        load_servegen(folder)
    assert str(folder) in str(raised.value)


def test_a_servegen_client_file_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "sg" / "chunk-0-trace.csv").mkdir(parents=True)
    with pytest.raises(TraceError, match="chunk-0-trace.csv cannot be read: Is a directory"):
        load_servegen(tmp_path / "sg")


def test_azure_rows_with_a_trailing_comma_keep_their_columns_and_extra_values_are_refused(tmp_path):
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10,\n1,50,5,\n")
    trace = load_azure_csv(trailing)
    assert trace.prompt_tokens.tolist() == [100, 50] and trace.output_tokens.tolist() == [10, 5]
    extra = tmp_path / "extra.csv"
    extra.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10,7\n1,50,5,8\n")
    with pytest.raises(TraceError, match="extra.csv: its rows have more fields than its header"):
        load_azure_csv(extra)


def test_cluster_view_adds_rates_of_no_pool_twice_and_sums_power():
    names = ("arrival_rps", "queue_requests", "ttft_p99_s", "power_w")
    prefill = IndicatorSeries("prefill", 10.0, 0.0, names, np.array([[5.0, 2.0, 0.5, 1000.0]]))
    decode = IndicatorSeries("decode", 10.0, 0.0, names, np.array([[5.0, 3.0, 0.9, 400.0]]))
    cluster = ClusterIndicators({"prefill": prefill, "decode": decode}).cluster()
    assert cluster.values.tolist() == [[5.0, 5.0, 0.9, 1400.0]]
    assert cluster.pool == "cluster" and cluster.names == names


def test_a_pool_that_does_not_report_an_indicator_is_left_out_of_the_cluster_value():
    names = ("queue_requests", "kv_use_fraction", "ttft_p99_s", "tpot_p99_s")
    nan = np.nan
    prefill = IndicatorSeries("prefill", 10.0, 0.0, names, np.array([[2.0, nan, 0.5, nan], [nan, nan, nan, nan]]))
    decode = IndicatorSeries("decode", 10.0, 0.0, names, np.array([[3.0, 0.4, nan, 0.05], [1.0, nan, nan, nan]]))
    hierarchy = ClusterIndicators({"prefill": prefill, "decode": decode})
    np.testing.assert_array_equal(hierarchy.cluster().values, [[5.0, 0.4, 0.5, 0.05], [1.0, nan, nan, nan]])
    frame = hierarchy.to_frame()
    assert frame.columns.tolist() == ["t_s", "pool", *names]
    assert frame["pool"].tolist() == ["cluster", "cluster", "prefill", "prefill", "decode", "decode"]
    assert frame["t_s"].tolist() == [0.0, 10.0] * 3
    np.testing.assert_array_equal(frame[frame.pool == "decode"][list(names)].to_numpy(), decode.values)
    with pytest.raises(IndicatorError, match="unknown indicators"):
        IndicatorSeries("x", 1.0, 0.0, ("gpu_temp",), np.zeros((1, 1)))
    with pytest.raises(IndicatorError, match="not aligned"):
        ClusterIndicators({"a": prefill, "b": IndicatorSeries("b", 5.0, 0.0, names, np.zeros((1, 4)))})
    with pytest.raises(IndicatorError, match="names repeat"):
        IndicatorSeries("x", 1.0, 0.0, ("arrival_rps", "arrival_rps"), np.zeros((1, 2)))
    for step_s, start_s in ((np.nan, 0.0), (np.inf, 0.0), (0.0, 0.0), (1.0, np.nan)):
        with pytest.raises(IndicatorError, match="step_s must be a finite number > 0 and start_s finite"):
            IndicatorSeries("x", step_s, start_s, ("arrival_rps",), np.zeros((1, 1)))


@pytest.mark.parametrize("first, last", [("1970-01-01 00:00:00", "2023-11-16 18:17:03"),  # a zero epoch among 2023
                                         ("2023-11-16 18:17:03", "2203-11-16 18:17:05")])  # a typo'd year
def test_a_replay_too_long_to_hold_is_refused_before_allocating_naming_its_first_and_last_timestamps(
        tmp_path, first, last):
    trace = load_azure_csv(_azure(tmp_path, [f"{last},100,10", f"{first},100,10"]))
    with pytest.raises(TraceError, match=rf"span [\d,]+ s \([\d,.]+ days\) \(TIMESTAMP '{first}' at data row 2 to "
                                         rf"'{last}' at data row 1\), .* beyond the 20,000,000 a replay holds: check "
                                         r"those timestamps for a wrong date, or give a longer tick \(--tick-s\)"):
        trace.to_ticks(1e-3)  # ~1e12 ticks: 8 TB a per-tick array


def test_the_tick_bound_counts_the_last_tick(tmp_path, monkeypatch):
    monkeypatch.setattr(traces, "MAX_TICKS", 100)
    assert load_azure_csv(_azure(tmp_path, ["0,1,1", "99.5,1,1"])).to_ticks(1.0).n_ticks == 100
    with pytest.raises(TraceError, match="101 ticks of 1 s, beyond the 100"):
        load_azure_csv(_azure(tmp_path, ["0,1,1", "100,1,1"])).to_ticks(1.0)
    with pytest.raises(TraceError, match=r"ServeGen folder .*sg: its windows span 1,200 s, 1,200 ticks of 1 s"):
        _write_client(tmp_path / "sg", "chunk-0-trace.csv", ["0,1.0,1.0,Gamma,1.0,1.0", "600,1.0,1.0,Gamma,1.0,1.0"])
        load_servegen(tmp_path / "sg", step_s=1.0)


def test_a_tick_longer_than_the_requests_span_is_refused(tmp_path):
    five_minutes = load_azure_csv(_azure(tmp_path, ["2023-11-16 18:17:03,100,10", "2023-11-16 18:22:03,100,10"]))
    with pytest.raises(TraceError, match=r"span 300 s \(TIMESTAMP .*\), less than the 600 s tick, whose ticks would "
                                         r"count 600 s: give a tick \(--tick-s\) of at most 300 s"):
        five_minutes.to_ticks(600.0)
    assert five_minutes.to_ticks(300.0).n_ticks == 2
    assert load_azure_csv(_azure(tmp_path, ["0,100,10", "0,100,10"])).to_ticks(600.0).n_ticks == 1  # no span to exceed


def test_day_first_dates_are_read_with_one_format_for_every_row(tmp_path):
    # Row by row, 12/11 would be read month-first (December) and 13/11 day-first (November).
    trace = load_azure_csv(_azure(tmp_path, ["12/11/2023 23:59:00,100,10", "13/11/2023 00:03:41,100,10"]))
    assert trace.arrival_s.tolist() == [0.0, 281.0]
    offsets = _azure(tmp_path, ["16/11/2023 18:15:46+01:00,1,1", "16/11/2023 18:15:47+02:00,1,1",
                                "17/11/2023 00:00:00Z,1,1"])
    assert load_azure_csv(offsets).arrival_s.tolist() == [0.0, 3599.0, 27853.0]
    azure_2023 = _azure(tmp_path, ["2023-11-16 18:17:03.9799600,1,1", "2023-11-16 18:17:04.0319600,1,1",
                                   "2023-11-16 18:17:05,1,1"])
    assert load_azure_csv(azure_2023).arrival_s.tolist() == pytest.approx([0.0, 0.052, 1.02004])
    mixed = _azure(tmp_path, ["2023-11-16 18:17:03,1,1", "16/11/2023 18:17:05,1,1", "2023-11-16 18:17:06,1,1"])
    with pytest.raises(TraceError, match=r"1 malformed rows \(first at data row 2: TIMESTAMP '16/11/2023 18:17:05' is "
                                         "not a date/time"):
        load_azure_csv(mixed)


def test_epoch_milliseconds_are_refused(tmp_path):
    with pytest.raises(TraceError, match="TIMESTAMP 1700158623000 at data row 1 is past the year 5000 as seconds: it "
                                         "looks like epoch milliseconds; give seconds"):
        load_azure_csv(_azure(tmp_path, ["1700158623000,100,10", "1700162223000,100,10"]))
    assert load_azure_csv(_azure(tmp_path, ["99999999999,1,1", "99999999999.5,1,1"])).arrival_s[-1] == 0.5


@pytest.mark.parametrize("value, shown", [("1e300", "1e+300"), ("10000000", "10000000")])
def test_token_counts_past_the_bound_are_refused_naming_the_row_and_column(tmp_path, value, shown):
    path = _azure(tmp_path, ["2023-11-16 18:17:03,100,10", f"2023-11-16 18:17:04,100,{value}"])
    with pytest.raises(TraceError, match=re.escape(f"GeneratedTokens {shown} at data row 2 is 1e+07 tokens or more")):
        load_azure_csv(path)
    assert load_azure_csv(_azure(tmp_path, ["0,9999999,1"])).prompt_tokens.tolist() == [9999999]


def test_a_trace_that_is_not_a_regular_file_says_what_it_is(tmp_path):
    with pytest.raises(TraceError, match="trace file /dev/null is not a regular file"):
        load_azure_csv("/dev/null")
    with pytest.raises(TraceError, match="trace /dev/null is not a regular file"):
        load_trace("/dev/null", 1.0)
    with pytest.raises(TraceError, match="is a folder, not a file"):
        load_azure_csv(tmp_path)


def test_a_lone_row_of_the_other_kind_is_the_one_named(tmp_path):
    rows = ["0,1,1"] + [f"2023-11-16 18:17:{s:02d},1,1" for s in range(10)]
    with pytest.raises(TraceError, match=r": 1 malformed rows \(first at data row 1: TIMESTAMP '0' is not a date/time"):
        load_azure_csv(_azure(tmp_path, rows))


def test_a_compressed_trace_is_named_without_its_suffixes(tmp_path):
    path = tmp_path / "conv.csv.gz"
    path.write_bytes(gzip.compress((HEADER + "0,1,1\n1,1,1\n").encode()))
    assert load_azure_csv(path).name == "conv"
    assert load_azure_csv(_azure(tmp_path, ["0,1,1"], name="conv.csv")).name == "conv"


def test_servegen_ticks_that_divide_the_window_are_accepted_though_600_mod_them_is_not_0_in_floating_point(tmp_path):
    _write_client(tmp_path / "sg", "chunk-0-trace.csv", ["0,1.0,1.0,Gamma,1.0,1.0"])
    for step_s, n_ticks in ((0.1, 6000), (0.3, 2000), (600.0, 1)):
        assert load_servegen(tmp_path / "sg", step_s=step_s).n_ticks == n_ticks
    for step_s in (0.7, 601.0, 0.0, float("nan")):
        with pytest.raises(TraceError, match="step_s must divide the 600 s ServeGen window"):
            load_servegen(tmp_path / "sg", step_s=step_s)


def test_an_unreadable_cache_entry_is_synthesised_again_with_a_warning(tmp_path):
    folder, cache = tmp_path / "sg", tmp_path / "cache"
    _write_client(folder, "chunk-0-trace.csv", ["0,2.0,1.5,Gamma,0.44,1.0"])
    first = load_servegen(folder, seed=1, cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    for broken in (entry.read_bytes()[:100], b""):  # cut short by Ctrl-C, or empty
        entry.write_bytes(broken)
        with pytest.warns(RuntimeWarning, match=f"ServeGen cache {entry} cannot be read .*; synthesising again"):
            again = load_servegen(folder, seed=1, cache_dir=cache)
        assert np.array_equal(first.n_requests, again.n_requests)
        assert np.array_equal(first.prompt_tokens, load_servegen(folder, seed=1, cache_dir=cache).prompt_tokens)
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_an_interrupted_cache_write_leaves_no_entry(tmp_path, monkeypatch):
    def interrupted(file, **arrays):
        (Path(file) if isinstance(file, (str, Path)) else file).write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    folder, cache = tmp_path / "sg", tmp_path / "cache"
    _write_client(folder, "chunk-0-trace.csv", ["0,2.0,1.5,Gamma,0.44,1.0"])
    monkeypatch.setattr(traces.np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_servegen(folder, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_a_cache_that_cannot_be_written_is_a_warning(tmp_path):
    _write_client(tmp_path / "sg", "chunk-0-trace.csv", ["0,2.0,1.5,Gamma,0.44,1.0"])
    (tmp_path / "file").write_text("")
    with pytest.warns(RuntimeWarning, match="ServeGen cache .*file/servegen-sg-.*.npz not written: "):
        assert load_servegen(tmp_path / "sg", cache_dir=tmp_path / "file").n_requests.sum() > 0
