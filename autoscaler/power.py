"""Power model and the order of measures when the cluster power cap binds.

Per-GPU watts are Splitwise's constant model (idle / prefill / decode). When serving's draw at
its actual activity, plus training, exceeds the cap we follow POLCA's reactive controller (arXiv
2308.12908): first shed low-priority work (training), then cap serving GPU clocks (at a 70% power
cap prefill runs 1.30x slower, decode ~1.00x: Splitwise's power-capped H100 profile), and only then
refuse serving capacity (the power brake).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Splitwise configs/power_model/constant.yaml, watts per GPU.
GPU_WATTS = {
    "a100-80gb": (63.0, 400.0, 250.0),
    "h100-80gb": (75.0, 700.0, 380.0),
}
# Training draws close to TDP (POLCA: training rows peak at 97% of provisioned power).
TRAINING_TDP_FRACTION = 0.97


class PowerError(ValueError):
    """Unknown hardware or an invalid power parameter."""


@dataclass(frozen=True)
class PowerModel:
    """Watts per GPU by activity, and the frequency cap POLCA applies before refusing work."""

    idle_w: float
    prefill_w: float
    decode_w: float
    tdp_w: float
    freq_cap_fraction: float = 0.70
    prefill_slowdown_capped: float = 1.30  # decode is memory-bound: ~1.0x at the cap (Splitwise), so unaffected

    def __post_init__(self) -> None:
        for name in ("idle_w", "prefill_w", "decode_w"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise PowerError(f"{name} must be a finite number of watts >= 0, got {getattr(self, name)!r}")
        if not (math.isfinite(self.tdp_w) and self.tdp_w > 0):
            raise PowerError(f"tdp_w must be a finite number of watts > 0, got {self.tdp_w!r}")
        if not 0 < self.freq_cap_fraction <= 1:
            raise PowerError(f"freq_cap_fraction (capped clocks' share of TDP) must lie in (0, 1], got "
                             f"{self.freq_cap_fraction!r}")
        if not (math.isfinite(self.prefill_slowdown_capped) and self.prefill_slowdown_capped >= 1):
            raise PowerError(f"prefill_slowdown_capped must be a finite factor >= 1 (capped clocks are not faster), "
                             f"got {self.prefill_slowdown_capped!r}")

    @classmethod
    def for_hardware(cls, hardware: str) -> PowerModel:
        base = hardware.removesuffix("-pcap")
        if base not in GPU_WATTS:
            raise PowerError(f"no power constants for hardware {hardware!r}; known: {sorted(GPU_WATTS)}")
        idle, prefill, decode = GPU_WATTS[base]
        return cls(idle_w=idle, prefill_w=prefill, decode_w=decode, tdp_w=prefill)

    @property
    def training_w(self) -> float:
        return TRAINING_TDP_FRACTION * self.tdp_w

    def serving_w(self, prefill_gpus: np.ndarray | float, prefill_busy: np.ndarray | float,
                  decode_gpus: np.ndarray | float, decode_busy: np.ndarray | float,
                  freq_capped: bool = False) -> np.ndarray:
        """Watts of the serving pools; ``*_busy`` is the busy fraction in [0, 1] of each pool."""
        prefill_active = min(self.prefill_w, self.freq_cap_fraction * self.tdp_w) if freq_capped else self.prefill_w
        decode_active = min(self.decode_w, self.freq_cap_fraction * self.tdp_w) if freq_capped else self.decode_w
        pg = np.asarray(prefill_gpus, dtype=float)
        dg = np.asarray(decode_gpus, dtype=float)
        return (pg * (self.idle_w + np.asarray(prefill_busy) * (prefill_active - self.idle_w))
                + dg * (self.idle_w + np.asarray(decode_busy) * (decode_active - self.idle_w)))


def check_power_cap(cap_w: float | None, error: type[ValueError] = PowerError, name: str = "power_cap_w") -> None:
    """Raise ``error`` unless ``cap_w`` is None (no cap) or a finite number of watts > 0: the one rule the
    cluster, the decision and the power manager each check their cap by."""
    if cap_w is not None and not (math.isfinite(cap_w) and cap_w > 0):
        raise error(f"{name} must be a finite number of watts > 0 (or None: no cap), got {cap_w!r}")


@dataclass(frozen=True)
class PowerPlan:
    """What the power manager does this interval, in POLCA's order, and the resulting draw (serving
    and training)."""

    training_gpus: int
    freq_capped: bool
    serving_scale: float
    power_w: float
    violated: bool
    prefill_slowdown: float = 1.0


def plan_power(model: PowerModel, cap_w: float | None, serving_w: Callable[[bool, float], float],
               serving_w_capped_full: float, training_gpus_wanted: int) -> PowerPlan:
    """POLCA's reactive controller over one interval: shed training, then cap clocks, then brake serving.

    ``serving_w(freq_capped, scale)`` is serving's draw over the interval as it runs at those clocks
    with the brake at ``scale`` (1: none), at the activity its demand gives it: idle replicas draw
    idle watts, so demand that keeps them idle leaves room for training. It is called at full clocks,
    then, only if serving alone exceeds the cap there, at capped clocks, and only if that still
    exceeds it, braked. The brake scales serving to ``cap_w / serving_w_capped_full`` (its draw at
    capped clocks and full activity), so that it fits whatever the braked interval does; a braked
    interval is a violation.

    Raises:
        PowerError: ``cap_w`` is not a finite number of watts > 0 (None means no cap).
    """
    check_power_cap(cap_w, name="cap_w")
    full = serving_w(False, 1.0)
    if cap_w is None:
        return PowerPlan(training_gpus_wanted, False, 1.0, full + training_gpus_wanted * model.training_w, False)
    if full <= cap_w:
        train = min(training_gpus_wanted, int((cap_w - full) // model.training_w))
        return PowerPlan(train, False, 1.0, full + train * model.training_w, False)
    capped = serving_w(True, 1.0)
    if capped <= cap_w:
        return PowerPlan(0, True, 1.0, capped, False, model.prefill_slowdown_capped)
    scale = cap_w / serving_w_capped_full
    return PowerPlan(0, True, scale, serving_w(True, scale), True, model.prefill_slowdown_capped)
