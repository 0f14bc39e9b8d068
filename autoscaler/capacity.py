"""Capacity model: per-replica prefill and decode latency curves fitted from a profile table.

The table is Splitwise's ``perf_model.csv`` schema (one row per measured run:
``model, hardware, prompt_size, batch_size, token_size, prompt_time, token_time,
tensor_parallel`` with times in ms); ``flowtide profile`` writes our own engine's
profile in the same schema, so one loader serves GPU planning and the local engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

PROFILE_COLUMNS = ("model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time", "token_time",
                   "tensor_parallel")
DEFAULT_PROFILE = ("llama2-70b", "h100-80gb", 4)


class ProfileError(ValueError):
    """A profile file is missing, malformed, or lacks the requested configuration."""


def decode_context_tokens(prompt_tokens, output_tokens):
    """Mean context of a decoding sequence: its prompt plus half its output (the middle of its decode),
    the ``ctx`` the TPOT curve is fitted and read at."""
    return prompt_tokens + output_tokens / 2.0


def load_profile_table(path: str | Path) -> pd.DataFrame:
    """Read a profile CSV and check it has the perf_model.csv columns with positive times."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile file {path} is not a readable CSV: {exc}") from exc
    missing = [c for c in PROFILE_COLUMNS if c not in table.columns]
    if missing:
        raise ProfileError(f"profile file {path} lacks columns {missing} (perf_model.csv schema: {PROFILE_COLUMNS})")
    for col in ("prompt_size", "batch_size", "token_size", "prompt_time", "token_time", "tensor_parallel"):
        values = pd.to_numeric(table[col], errors="coerce")
        if values.isna().any() or (values <= 0).any():
            raise ProfileError(f"profile file {path}: column {col!r} must hold positive numbers")
        table[col] = values
    return table


@dataclass(frozen=True)
class CapacityModel:
    """Latency curves of one replica (``tensor_parallel`` GPUs) of one model on one hardware.

    Prefill: ``prompt_time(n, r) = max(floor, p0 + pr r + p1 n + p2 n^2)`` seconds for a batch of ``r``
    requests holding ``n`` prompt tokens (non-negative least squares on relative error). ``pr``, a cost
    per request, is what a serving path adds (HTTP, routing, the KV hand-off: ~4-5 ms a request for
    the tiny model served on 2 CPU cores); on a GPU's own prefill it fits to 0 (Splitwise's H100 rows,
    where 4 x 512 tokens take what 1 x 2,048 do) or trades for ``p0`` (A100).
    Decode: ``tpot(b, ctx) = d0 + d1 b + d2 b^2 + d3 b ctx`` seconds per token at batch ``b`` with mean context ``ctx`` tokens (:func:`decode_context_tokens`).

    Only the decode batch is held to what was measured: :meth:`max_batch_within` never goes past
    ``max_batch``, the largest profiled batch. Prompt length and context are read off the fitted
    polynomials, beyond the profile's range too: Splitwise's llama2-70b H100 TP4 rows stop at an
    8,192-token prompt and a context of 8,256, so a longer tail prompt's prefill time (e.g.
    ``prefill_tokens_per_s_within(10, 1000, 20_000)``) and a longer context's TPOT are extrapolated.
    """

    model: str
    hardware: str
    tensor_parallel: int
    prefill_coef: tuple[float, float, float]
    prefill_floor_s: float
    decode_coef: tuple[float, float, float, float]
    max_batch: int
    prefill_per_request_s: float = 0.0

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel

    def prefill_time_s(self, batch_tokens: np.ndarray | float, requests: np.ndarray | float = 1.0) -> np.ndarray | float:
        """Seconds to prefill one batch of ``requests`` prompts holding ``batch_tokens`` tokens in all."""
        p0, p1, p2 = self.prefill_coef
        n = np.asarray(batch_tokens, dtype=float)
        return np.maximum(self.prefill_floor_s, p0 + self.prefill_per_request_s * np.asarray(requests, dtype=float)
                          + p1 * n + p2 * n * n)

    def prefill_tokens_per_s(self, batch_tokens: float = 4096.0,
                             mean_prompt_tokens: np.ndarray | float | None = None) -> np.ndarray | float:
        """Sustained prefill throughput of one replica running batches of ``batch_tokens``, made of
        prompts of ``mean_prompt_tokens`` (None: one request a batch). Short prompts pay the cost per
        request more often."""
        requests = 1.0 if mean_prompt_tokens is None else batch_tokens / np.maximum(mean_prompt_tokens, 1.0)
        rate = batch_tokens / self.prefill_time_s(batch_tokens, requests)
        return float(rate) if np.ndim(rate) == 0 else rate

    def ttft_s(self, prefill_tokens_per_s: np.ndarray | float, prompt_tokens: np.ndarray | float,
               mean_prompt_tokens: float = 1024.0) -> np.ndarray:
        """Expected TTFT of a prompt on one replica loaded with ``prefill_tokens_per_s``.

        Own service time plus an M/D/1 wait (Pollaczek-Khinchine) for the work ahead; infinite
        at or above saturation.
        """
        rho = np.asarray(prefill_tokens_per_s, dtype=float) / self.prefill_tokens_per_s(
            mean_prompt_tokens=mean_prompt_tokens)
        service = self.prefill_time_s(prompt_tokens)
        mean_service = self.prefill_time_s(mean_prompt_tokens)
        with np.errstate(divide="ignore", invalid="ignore"):
            wait = np.where(rho < 1.0, rho * mean_service / (2.0 * (1.0 - rho)), np.inf)
        return service + wait

    def tpot_s(self, batch: np.ndarray | float, context_tokens: np.ndarray | float = 1024.0) -> np.ndarray:
        """Seconds per output token at decode batch ``batch`` (>= 1) and mean context length."""
        d0, d1, d2, d3 = self.decode_coef
        b = np.maximum(np.asarray(batch, dtype=float), 1.0)
        return d0 + d1 * b + d2 * b * b + d3 * b * np.asarray(context_tokens, dtype=float) / 1000.0

    def max_batch_within(self, tpot_slo_s: float, context_tokens: float = 1024.0, margin: float = 0.9) -> int:
        """Largest decode batch whose TPOT stays under ``margin * tpot_slo_s`` (at most ``max_batch``)."""
        b = np.arange(1, self.max_batch + 1)
        ok = b[self.tpot_s(b, context_tokens) <= margin * tpot_slo_s]
        return int(ok[-1]) if ok.size else 0

    def prefill_tokens_per_s_within(self, ttft_slo_s: float, mean_prompt_tokens: float,
                                    tail_prompt_tokens: float, margin: float = 0.9) -> float:
        """Highest prefill load (tokens/s) one replica takes while a ``tail_prompt_tokens`` prompt
        still meets ``margin * ttft_slo_s``; solves the M/D/1 TTFT curve for the load."""
        budget = margin * ttft_slo_s - float(self.prefill_time_s(tail_prompt_tokens))
        if budget <= 0:
            return 0.0
        mean_service = float(self.prefill_time_s(mean_prompt_tokens))
        # rho s / (2 (1 - rho)) = budget  ->  rho = 2 budget / (s + 2 budget); a budget past float range
        # (an SLO of 1e308 s) leaves a replica fully loaded, where the formula would be inf / inf.
        rho = 2.0 * budget / (mean_service + 2.0 * budget) if math.isfinite(2.0 * budget) else 1.0
        return rho * self.prefill_tokens_per_s(mean_prompt_tokens=mean_prompt_tokens)


def fit_capacity(table: pd.DataFrame, model: str, hardware: str, tensor_parallel: int) -> CapacityModel:
    """Fit the prefill and decode curves of one (model, hardware, TP) from a profile table.

    Raises:
        ProfileError: no rows match, or too few distinct points to fit.
    """
    rows = table[(table["model"] == model) & (table["hardware"] == hardware)
                 & (table["tensor_parallel"] == tensor_parallel)]
    if rows.empty:
        have = sorted({(m, h, int(t)) for m, h, t in table[["model", "hardware", "tensor_parallel"]].itertuples(
            index=False)})
        raise ProfileError(f"profile has no rows for {(model, hardware, tensor_parallel)}; it has {have}")
    rows = _drop_inconsistent(rows)
    if rows[["prompt_size", "batch_size"]].drop_duplicates().shape[0] < 3:
        raise ProfileError(f"profile for {(model, hardware, tensor_parallel)} has fewer than 3 distinct shapes")
    b = rows["batch_size"].to_numpy(float)
    n = rows["prompt_size"].to_numpy(float) * b
    prompt_s = rows["prompt_time"].to_numpy(float) / 1e3
    # Small prompts hit a fixed floor (kernel launch, scheduling); the curve is fitted above it.
    floor = float(rows.groupby(["prompt_size", "batch_size"])["prompt_time"].mean().min()) / 1e3
    above = prompt_s > 1.5 * floor
    if above.sum() < 3:
        above = np.ones_like(above)
    p0, per_request, p1, p2 = _relative_nnls(np.column_stack([np.ones_like(n), b, n, n * n])[above], prompt_s[above])
    ctx = decode_context_tokens(rows["prompt_size"], rows["token_size"]).to_numpy(float)
    decode = _relative_nnls(np.column_stack([np.ones_like(b), b, b * b, b * ctx / 1000.0]),
                            rows["token_time"].to_numpy(float) / 1e3)
    return CapacityModel(model=model, hardware=hardware, tensor_parallel=int(tensor_parallel),
                         prefill_coef=(float(p0), float(p1), float(p2)), prefill_floor_s=floor,
                         decode_coef=tuple(float(x) for x in decode),
                         max_batch=int(rows["batch_size"].max()), prefill_per_request_s=float(per_request))


def _relative_nnls(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error, so 50 ms and 3 s points count alike."""
    coef, _ = nnls(features / target[:, None], np.ones_like(target))
    return coef


def _drop_inconsistent(rows: pd.DataFrame) -> pd.DataFrame:
    """Drop shapes whose prompt time falls below that of a smaller batch at the same prompt size.

    Splitwise's TP2 llama2-70b rows at batch 64 report a prompt time 6x below batch 32 (the run
    did not fit in memory); a profile must be monotone in work, so such rows are not measurements.
    """
    means = rows.groupby(["prompt_size", "batch_size"])["prompt_time"].mean().reset_index()
    bad = set()
    for _, group in means.groupby("prompt_size"):
        running = -math.inf
        for prompt_size, batch_size, t in group.sort_values("batch_size").itertuples(index=False):
            if t < 0.5 * running:
                bad.add((prompt_size, batch_size))
            running = max(running, t)
    if not bad:
        return rows
    keep = [(p, b) not in bad for p, b in rows[["prompt_size", "batch_size"]].itertuples(index=False)]
    return rows[keep]


def load_capacity(path: str | Path, model: str = DEFAULT_PROFILE[0], hardware: str = DEFAULT_PROFILE[1],
                  tensor_parallel: int = DEFAULT_PROFILE[2]) -> CapacityModel:
    """Load a perf_model.csv-schema file and fit one configuration's curves."""
    return fit_capacity(load_profile_table(path), model, hardware, tensor_parallel)
