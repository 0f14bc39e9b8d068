"""Power model and the order of measures when the cluster power cap binds.

Per-GPU watts are Splitwise's constant model (idle / prefill / decode). When the cap binds we
follow POLCA (arXiv 2308.12908): first shed low-priority work (training), then cap serving GPU
clocks (at a 70% power cap prefill runs 1.30x slower, decode ~1.00x: Splitwise's power-capped
H100 profile), and only then refuse serving capacity (the power brake).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


@dataclass(frozen=True)
class PowerPlan:
    """What the power manager does this interval, in POLCA's order."""

    training_gpus: int
    freq_capped: bool
    serving_scale: float
    violated: bool
    prefill_slowdown: float = 1.0


def plan_power(model: PowerModel, cap_w: float | None, serving_w: float, serving_w_capped: float,
               training_gpus_wanted: int) -> PowerPlan:
    """Fit serving plus training under ``cap_w``: shed training, then cap clocks, then brake serving.

    ``serving_w`` / ``serving_w_capped`` are the serving draw at full and at capped clocks. A
    violation is recorded when the brake has to refuse serving capacity: serving alone, clocks
    capped, would exceed the cap.

    Raises:
        PowerError: ``cap_w`` is not a finite number of watts > 0 (None means no cap).
    """
    if cap_w is not None and not (math.isfinite(cap_w) and cap_w > 0):
        raise PowerError(f"cap_w must be a finite number of watts > 0 (or None: no cap), got {cap_w!r}")
    if cap_w is None:
        return PowerPlan(training_gpus_wanted, False, 1.0, False)
    room = cap_w - serving_w
    if room >= 0:
        train = min(training_gpus_wanted, int(room // model.training_w))
        return PowerPlan(train, False, 1.0, False)
    if serving_w_capped <= cap_w:
        return PowerPlan(0, True, 1.0, False, model.prefill_slowdown_capped)
    return PowerPlan(0, True, cap_w / serving_w_capped, True, model.prefill_slowdown_capped)
