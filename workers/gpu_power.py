"""GPU board power over a profile's runs, from NVML, in Splitwise's units (a fraction of the power limit).

Splitwise's ``perf_model.csv`` carries ``peak_power`` and ``average_power`` per run; the profiler fills
them from this sampler when NVML (the ``nvidia-ml-py`` package) sees the replica's GPUs, and leaves
0.0 (not measured) otherwise.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Protocol


class PowerSampler(Protocol):
    def window(self, start: float, end: float) -> tuple[float, float]:
        """(peak, average) draw over ``[start, end]`` (``time.perf_counter`` seconds), as a fraction of TDP."""

    def close(self) -> None: ...


class NvmlPower:
    """Summed board power of the GPUs one replica runs on, polled every ``interval_s`` in a thread."""

    def __init__(self, nvml, handles: list, interval_s: float = 0.02) -> None:
        self._nvml, self._handles, self._interval_s = nvml, handles, interval_s
        self.limit_w = sum(nvml.nvmlDeviceGetEnforcedPowerLimit(h) for h in handles) / 1e3
        self._times: list[float] = []
        self._watts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="nvml-power", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, devices: int) -> NvmlPower | None:
        """The sampler for this process's first ``devices`` GPUs, or None without NVML or that many GPUs.

        The GPUs are found from ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs) without touching CUDA:
        a CUDA context in the profiling process would force vLLM's workers from fork to spawn.
        """
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible is not None
               else [str(i) for i in range(pynvml.nvmlDeviceGetCount())])
        try:
            if devices < 1 or len(ids) < devices:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
            handles = [pynvml.nvmlDeviceGetHandleByUUID(i) if i.startswith(("GPU-", "MIG-"))
                       else pynvml.nvmlDeviceGetHandleByIndex(int(i)) for i in ids[:devices]]
        except (pynvml.NVMLError, ValueError):
            pynvml.nvmlShutdown()
            return None
        return cls(pynvml, handles)

    def _poll(self) -> None:
        while not self._stop.is_set():
            watts = sum(self._nvml.nvmlDeviceGetPowerUsage(h) for h in self._handles) / 1e3
            self._times.append(time.perf_counter())
            self._watts.append(watts)
            self._stop.wait(self._interval_s)

    def window(self, start: float, end: float) -> tuple[float, float]:
        lo, hi = bisect.bisect_left(self._times, start), bisect.bisect_right(self._times, end)
        # A run shorter than the poll interval reads the sample just before its end.
        watts = self._watts[lo:hi] or self._watts[max(0, hi - 1):hi]
        if not watts:
            return 0.0, 0.0
        return round(max(watts) / self.limit_w, 4), round(sum(watts) / len(watts) / self.limit_w, 4)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
