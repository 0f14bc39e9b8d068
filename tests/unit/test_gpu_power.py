"""NVML power sampling on a real GPU; skipped where there is none (CI has none, GPU hosts run it)."""

import time

import pytest
import torch

from workers.gpu_power import NvmlPower

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_visible_device_list_too_short_for_the_replica_opens_nothing(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert NvmlPower.open(2) is None


def test_power_reads_as_a_fraction_of_the_limit_and_rises_under_load():
    power = NvmlPower.open(1)
    assert power is not None, "CUDA sees a GPU but NVML did not open it"
    try:
        time.sleep(0.5)
        start = time.perf_counter()
        time.sleep(1.0)
        idle = power.window(start, time.perf_counter())
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        start = time.perf_counter()
        while time.perf_counter() - start < 2.0:
            a @ a
            torch.cuda.synchronize()
        busy = power.window(start, time.perf_counter())
    finally:
        power.close()
    assert 0 < idle[1] <= idle[0] <= 1.2 and 0 < busy[1] <= busy[0] <= 1.2
    assert busy[1] > 2 * idle[1], f"matrix products drew {busy} of the limit, idle {idle}"
