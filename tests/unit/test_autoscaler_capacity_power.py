"""Capacity model fitted from the Splitwise profile, and the POLCA power order."""


import numpy as np
import pytest

from autoscaler.capacity import ProfileError, fit_capacity, load_capacity, load_profile_table
from autoscaler.power import PowerError, PowerModel, plan_power

from tests.conftest import SHARED_DATA, needs_data

PERF = SHARED_DATA / "splitwise-perf" / "perf_model.csv"
needs_perf = needs_data(PERF)


@needs_perf
def test_prefill_and_decode_curves_match_the_profile_within_15_percent():
    table = load_profile_table(PERF)
    cap = fit_capacity(table, "llama2-70b", "h100-80gb", 4)
    rows = table[(table.model == "llama2-70b") & (table.hardware == "h100-80gb") & (table.tensor_parallel == 4)]
    mean = rows.groupby(["prompt_size", "batch_size"])[["prompt_time", "token_time"]].mean().reset_index()
    pred_prefill = cap.prefill_time_s(mean.prompt_size * mean.batch_size) * 1e3
    pred_decode = cap.tpot_s(mean.batch_size, mean.prompt_size) * 1e3
    assert np.all(np.abs(pred_prefill / mean.prompt_time - 1) < 0.15)
    assert np.all(np.abs(pred_decode / mean.token_time - 1) < 0.15)


@needs_perf
def test_power_capped_h100_prefill_is_1_3x_slower_and_decode_unchanged():
    free = load_capacity(PERF, "llama2-70b", "h100-80gb", 4)
    capped = load_capacity(PERF, "llama2-70b", "h100-80gb-pcap", 4)
    assert free.prefill_tokens_per_s() / capped.prefill_tokens_per_s() == pytest.approx(1.3, rel=0.03)
    assert float(capped.tpot_s(32)) == pytest.approx(float(free.tpot_s(32)), rel=0.03)


@needs_perf
def test_ttft_grows_with_load_and_is_infinite_at_saturation():
    cap = load_capacity(PERF)
    loads = np.array([0.0, 0.5, 0.9, 1.0]) * cap.prefill_tokens_per_s()
    ttft = cap.ttft_s(loads, 1024)
    assert np.all(np.diff(ttft[:3]) > 0) and np.isinf(ttft[3])
    budget = cap.prefill_tokens_per_s_within(2.0, 1024, 4096, margin=1.0)
    assert float(cap.ttft_s(budget, 4096, 1024)) == pytest.approx(2.0, rel=1e-6)
    # An SLO past float range (`--ttft-slo-s 1e308`) once made the load inf / inf = NaN, and every policy's
    # replica count NaN: a replica is then fully loaded, at just under an SLO of 1e300 s.
    unbounded = cap.prefill_tokens_per_s_within(1e308, 1024, 4096)
    assert unbounded == float(cap.prefill_tokens_per_s(mean_prompt_tokens=1024))
    assert unbounded == pytest.approx(cap.prefill_tokens_per_s_within(1e300, 1024, 4096), rel=1e-12)


@needs_perf
def test_inconsistent_tp2_batch64_rows_are_dropped_from_the_fit():
    cap = load_capacity(PERF, "llama2-70b", "h100-80gb", 2)
    assert cap.max_batch == 32


def test_profile_errors_name_the_problem(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile_table(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("model,hardware\nx,y\n")
    with pytest.raises(ProfileError, match="lacks columns"):
        load_profile_table(bad)


def test_own_engine_profile_in_the_same_schema_is_fitted(tmp_path):
    rows = ["model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel"]
    for prompt in (64, 128, 256):
        for batch in (1, 2, 4, 8):
            rows.append(f"tiny,cpu,{prompt},{batch},16,{5 + 0.02 * prompt * batch},{3 + 0.5 * batch},1")
    path = tmp_path / "engine.csv"
    path.write_text("\n".join(rows))
    cap = load_capacity(path, "tiny", "cpu", 1)
    assert float(cap.prefill_time_s(512)) == pytest.approx((5 + 0.02 * 512) / 1e3, rel=1e-3)
    assert float(cap.tpot_s(4, 100)) == pytest.approx((3 + 0.5 * 4) / 1e3, rel=1e-2)
    with pytest.raises(ProfileError, match="no rows"):
        load_capacity(path, "tiny", "gpu", 1)


def test_a_cost_per_request_is_fitted_apart_from_the_cost_per_token(tmp_path):
    """A served profile: each request pays 4 ms (HTTP, routing) besides 0.02 ms a token; batching
    four prompts costs four requests' overhead, one prompt four times as long only one."""
    rows = ["model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel"]
    for prompt in (64, 128, 256, 512):
        for batch in (1, 2, 4, 8):
            rows.append(f"tiny,served,{prompt},{batch},16,{5 + 4 * batch + 0.02 * prompt * batch},{3 + 0.5 * batch},1")
    path = tmp_path / "served.csv"
    path.write_text("\n".join(rows))
    cap = load_capacity(path, "tiny", "served", 1)
    assert cap.prefill_per_request_s == pytest.approx(0.004, rel=1e-3)
    assert float(cap.prefill_time_s(512, requests=4)) == pytest.approx((5 + 16 + 0.02 * 512) / 1e3, rel=1e-3)
    assert float(cap.prefill_time_s(512)) == pytest.approx((5 + 4 + 0.02 * 512) / 1e3, rel=1e-3)
    # 4096-token batches of 64-token prompts hold 64 requests: (5 + 256 + 81.92) ms; of 1024-token prompts, 4.
    short, long = cap.prefill_tokens_per_s(mean_prompt_tokens=64), cap.prefill_tokens_per_s(mean_prompt_tokens=1024)
    assert short == pytest.approx(4096 / 0.34292, rel=1e-3)
    assert long == pytest.approx(4096 / (0.005 + 0.016 + 0.08192), rel=1e-3)
    np.testing.assert_allclose(cap.prefill_tokens_per_s(mean_prompt_tokens=np.array([64.0, 1024.0])), [short, long])
    # The load that keeps a prompt within the TTFT budget is read at the prompts' own throughput.
    assert cap.prefill_tokens_per_s_within(1.0, 64, 64) < cap.prefill_tokens_per_s_within(1.0, 1024, 1024)


@needs_perf
def test_splitwise_h100_prefill_has_no_cost_per_request():
    """On an H100 4 x 512 prompt tokens take what 1 x 2,048 do: the fit leaves the term at 0, so the
    benchmark's sizing does not depend on the prompts' mean length beyond their tokens."""
    for tp in (2, 4, 8):
        for hardware in ("h100-80gb", "h100-80gb-pcap"):
            cap = load_capacity(PERF, "llama2-70b", hardware, tp)
            assert cap.prefill_per_request_s == 0.0
            assert cap.prefill_tokens_per_s(mean_prompt_tokens=100.0) == cap.prefill_tokens_per_s()
    assert load_capacity(PERF, "llama2-70b", "a100-80gb", 4).prefill_per_request_s > 0.01


def test_polca_order_sheds_training_then_caps_clocks_then_brakes():
    pw = PowerModel.for_hardware("h100-80gb")
    tried = []

    def serving(full_clocks_w, capped_w):
        """Serving's draw by clocks and brake, recording which the controller asked for."""
        def draw(freq_capped, scale):
            tried.append((freq_capped, scale))
            return (capped_w if freq_capped else full_clocks_w) * scale
        return draw

    # Room for serving and 2 of 10 training GPUs: training is shed, clocks untouched.
    plan = plan_power(pw, 10_000.0, serving(8_000.0, 7_000.0), 9_000.0, 10)
    assert (plan.training_gpus, plan.freq_capped, plan.violated) == (int(2000 // pw.training_w), False, False)
    assert tried == [(False, 1.0)]  # serving at full clocks fits: capped clocks are never tried
    # Serving alone exceeds the cap at full clocks but fits capped: no training, clocks capped, prefill 1.3x.
    plan = plan_power(pw, 10_000.0, serving(11_000.0, 9_500.0), 12_000.0, 10)
    assert (plan.training_gpus, plan.freq_capped, plan.violated, plan.prefill_slowdown) == (0, True, False, 1.3)
    assert plan.power_w == 9_500.0
    # Even capped serving exceeds: the brake scales serving to fit at full activity (12,500 W capped), a violation.
    tried.clear()
    plan = plan_power(pw, 10_000.0, serving(13_000.0, 11_000.0), 12_500.0, 10)
    assert plan.violated and plan.serving_scale == pytest.approx(10_000 / 12_500)
    assert tried == [(False, 1.0), (True, 1.0), (True, plan.serving_scale)]
    assert plan.power_w == pytest.approx(11_000 * 10_000 / 12_500)
    # Without a cap training takes what it wants.
    assert plan_power(pw, None, serving(13_000.0, 11_000.0), 12_500.0, 10).training_gpus == 10


def test_frequency_cap_lowers_prefill_watts_to_70_percent_of_tdp_and_leaves_decode():
    pw = PowerModel.for_hardware("h100-80gb")
    assert float(pw.serving_w(1, 1.0, 0, 0.0, freq_capped=True)) == pytest.approx(0.7 * 700)
    assert float(pw.serving_w(0, 0.0, 1, 1.0, freq_capped=True)) == pytest.approx(380)
    with pytest.raises(PowerError, match="no power constants"):
        PowerModel.for_hardware("tpu-v5")


@pytest.mark.parametrize("field, value", [("freq_cap_fraction", 2.0), ("prefill_slowdown_capped", 0.5),
                                          ("tdp_w", 0.0), ("idle_w", -1.0)])
def test_a_power_model_with_impossible_values_is_refused_by_name(field, value):
    with pytest.raises(PowerError, match=field):
        PowerModel(**{"idle_w": 75.0, "prefill_w": 700.0, "decode_w": 380.0, "tdp_w": 700.0, field: value})


def test_a_cap_that_is_not_positive_watts_is_refused_not_planned():
    # A cap of -1 W was planned as a brake with serving_scale -0.0125.
    with pytest.raises(PowerError, match="cap_w"):
        plan_power(PowerModel.for_hardware("h100-80gb"), -1.0, lambda capped, scale: 8_000.0, 7_000.0, 10)
