"""Trace loaders: Azure LLM 2023 per-request CSVs and ServeGen per-client window files.

Both become a :class:`TickTrace`: per-tick arrivals and token sums (what the simulator and the
forecasters see) plus weighted request groups (what per-request SLO attainment is scored on).
ServeGen gives arrival processes only; request-level arrivals are synthesised from each
window's Gamma/Weibull inter-arrival law (seeded) and token lengths are drawn from
:data:`SERVEGEN_LENGTHS`, a log-normal fit to the Azure 2023 conversation trace.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
SERVEGEN_WINDOW_S = 600.0
SERVEGEN_COLUMNS = ("ts", "rate", "cv", "dist", "shape", "scale")
# Bounds on a ServeGen window, far beyond the published data (14 days; a client's busiest window
# 465 req/s) and low enough that a typo fails at once instead of exhausting memory.
SERVEGEN_MAX_TS_S = 366 * 86_400.0
SERVEGEN_MAX_RATE = 10_000.0
# Weibull gaps are drawn as E ** (1 / shape) in float32, which overflows below this shape (the
# published data's smallest is 0.18).
SERVEGEN_MIN_WEIBULL_SHAPE = 0.05
# A window's arrival buffer starts at its expected count plus four standard deviations and doubles
# until the window is covered (once at most on the published data); a law that needs more doublings
# (Gamma shape 1e-9, Weibull shape 0.001: gaps of zero and rare astronomic ones) cannot be drawn.
SERVEGEN_MAX_DOUBLINGS = 4
# A replay's length in ticks: 230 days at 1 s, 16x the 14-day ServeGen replay at 1 s. The simulator
# keeps some 30 float64 values a tick (~5 GB here) and replays ~2e4 ticks/s (17 min, static policy):
# a longer replay is a wrong date in the trace or a mistyped tick, refused before anything is allocated.
MAX_TICKS = 20_000_000
# Numeric timestamps are seconds; 1e11 s is the year 5138, so a column past it holds epoch milliseconds.
MAX_EPOCH_S = 1e11
# A request's prompt or output tokens: 5x the longest context window served today (2M tokens) and
# 700x the Azure traces' longest prompt (14,050); beyond it a count is a typo or a corrupted row.
MAX_TOKENS = 10_000_000
# pandas reads these compressed CSVs directly; the trace's name drops the suffix with the ``.csv``.
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zip", ".xz", ".zst")


class TraceError(ValueError):
    """A trace file or folder is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class LengthModel:
    """Independent log-normal prompt and output lengths (log-space mean and std), clipped."""

    prompt_log_mean: float
    prompt_log_std: float
    output_log_mean: float
    output_log_std: float
    max_prompt_tokens: int = 8192
    max_output_tokens: int = 2048

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = np.clip(np.rint(rng.lognormal(self.prompt_log_mean, self.prompt_log_std, n)), 1,
                         self.max_prompt_tokens)
        output = np.clip(np.rint(rng.lognormal(self.output_log_mean, self.output_log_std, n)), 1,
                         self.max_output_tokens)
        return prompt, output


# Fitted to AzureLLMInferenceTrace_conv.csv (19,366 requests): log-mean/std of ContextTokens and
# GeneratedTokens (their log-correlation is 0.09, so they are drawn independently).
SERVEGEN_LENGTHS = LengthModel(6.633, 0.985, 5.019, 0.859)


@dataclass(frozen=True)
class RequestGroups:
    """Requests scored for SLO attainment: each group is ``weight`` requests of one shape in one tick."""

    tick: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    weight: np.ndarray


@dataclass(frozen=True)
class TickTrace:
    """Demand per tick of ``step_s`` seconds: requests, prompt tokens and output tokens arriving."""

    name: str
    step_s: float
    n_requests: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    groups: RequestGroups

    @property
    def n_ticks(self) -> int:
        return int(self.n_requests.size)

    @property
    def duration_s(self) -> float:
        return self.n_ticks * self.step_s

    def rates(self) -> np.ndarray:
        """``[T, 3]`` arrival rate (req/s), input tokens/s, output tokens/s: the forecast target."""
        return np.column_stack([self.n_requests, self.prompt_tokens, self.output_tokens]) / self.step_s


@dataclass(frozen=True)
class RequestTrace:
    """Request-level trace: arrival seconds from the first request, prompt and output tokens.

    ``stamps`` names the earliest and latest TIMESTAMP as written, with their rows, for messages.
    """

    name: str
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    stamps: tuple[str, str] = ("", "")

    def to_ticks(self, step_s: float) -> TickTrace:
        """Requests binned into ticks of ``step_s`` from the first one.

        Raises:
            TraceError: ``step_s`` is not a finite number > 0, the replay would hold more than
                :data:`MAX_TICKS` ticks, or the tick is longer than the requests' span (its last
                tick would count time past the last request, doubling the trace or worse).
        """
        if not (math.isfinite(step_s) and step_s > 0):
            raise TraceError(f"step_s must be a finite number > 0, got {step_s}")
        self._check_span(step_s)
        tick = (self.arrival_s // step_s).astype(np.int64)
        n_ticks = int(tick[-1]) + 1 if tick.size else 0
        count = np.bincount(tick, minlength=n_ticks).astype(float)
        groups = RequestGroups(tick, self.prompt_tokens.astype(float), self.output_tokens.astype(float),
                               np.ones(tick.size))
        return TickTrace(self.name, float(step_s), count,
                         np.bincount(tick, self.prompt_tokens, n_ticks), np.bincount(tick, self.output_tokens, n_ticks),
                         groups)

    def _check_span(self, step_s: float) -> None:
        """Refuse a replay too long to hold, or a tick longer than the requests' span (see :meth:`to_ticks`)."""
        span = float(self.arrival_s[-1]) if self.arrival_s.size else 0.0
        n_ticks = span // step_s + 1  # a float: a huge span over a tiny tick overflows int64
        stamps = f" (TIMESTAMP {self.stamps[0]} to {self.stamps[1]})" if self.stamps[0] else ""
        if n_ticks > MAX_TICKS:
            raise TraceError(f"trace {self.name}: its requests span {_span(span)}{stamps}, {n_ticks:.3g} ticks of "
                             f"{step_s:g} s, beyond the {MAX_TICKS:,} a replay holds: check those timestamps for a "
                             "wrong date, or give a longer tick (--tick-s)")
        if 0 < span < step_s:
            raise TraceError(f"trace {self.name}: its requests span {span:g} s{stamps}, less than the {step_s:g} s "
                             f"tick, whose ticks would count {n_ticks * step_s:g} s: give a tick (--tick-s) of at "
                             f"most {span:g} s")


def _span(seconds: float) -> str:
    return f"{seconds:,.0f} s" + (f" ({seconds / 86_400:,.1f} days)" if seconds >= 86_400 else "")


def _timestamp_seconds(raw: pd.Series) -> tuple[np.ndarray, np.ndarray, str]:
    """Each row's time in seconds (from any origin), which rows are unreadable, and what they should be.

    A column most of whose values are numbers holds seconds; otherwise it holds dates/times (see
    :func:`_parse_dates`). Either way the rows of the other kind are the unreadable ones.
    """
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(float)
    if 2 * np.isfinite(numbers).sum() > raw.size:
        return numbers, ~np.isfinite(numbers), "not a number of seconds"
    stamps = _parse_dates(raw).dt.tz_convert(None)
    return ((stamps - stamps.min()) / np.timedelta64(1, "s")).to_numpy(float), stamps.isna().to_numpy(), "not a date/time"


def _parse_dates(raw: pd.Series) -> pd.Series:
    """Dates/times in UTC (naive ones taken as UTC, offsets may differ between rows), NaT where unreadable.

    ISO 8601 first; otherwise the one format, guessed from the first values month- or day-first,
    that reads the most rows, applied to every row. Guessing row by row would read
    ``12/11/2023`` then ``13/11/2023`` as December then November.
    """
    def parse(fmt: str) -> pd.Series:
        return pd.to_datetime(raw, errors="coerce", format=fmt, utc=True)

    best = parse("ISO8601")
    if best.isna().any():
        sample = raw.dropna().astype(str).iloc[:20]
        with warnings.catch_warnings():  # a day-first guess without dayfirst=True warns, and is what is wanted
            warnings.simplefilter("ignore", UserWarning)
            guesses = [guess_datetime_format(v, dayfirst=d) for d in (False, True) for v in sample]
        for fmt in dict.fromkeys(g for g in guesses if g):
            stamps = parse(fmt)
            if stamps.notna().sum() > best.notna().sum():
                best = stamps
    return best


def _read_csv(source, label: str, too_wide: str, **kwargs) -> pd.DataFrame:
    """``pd.read_csv(source, index_col=False, **kwargs)``, every failure a ``TraceError`` led by ``label``.

    index_col=False: rows longer than the header would otherwise make the first column the index and
    shift the others; a trailing comma is dropped, extra values are refused (``too_wide`` says why).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(source, index_col=False, **kwargs)
    except pd.errors.ParserWarning:
        raise TraceError(f"{label}: {too_wide}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise TraceError(f"{label} is not a readable CSV: {str(exc).strip()}") from exc


def file_problem(path: Path) -> str | None:
    """Why ``path`` is not a regular file to read (missing, a folder, a device or FIFO), or None."""
    if path.is_file():
        return None
    if path.is_dir():
        return "is a folder, not a file"
    return "is not a regular file" if path.exists() else "does not exist"


def load_azure_csv(path: str | Path) -> RequestTrace:
    """Load an Azure LLM inference trace (``TIMESTAMP, ContextTokens, GeneratedTokens``).

    TIMESTAMP is a date/time (the 2023 traces' naive ``2023-11-16 18:17:03.9799600``, the 2024
    ones' ``2024-05-10 00:00:00.009930+00:00``, ISO ``...T18:15:46Z``; offsets may differ between
    rows, all are converted to UTC; one format for every row) or, when most values are numbers,
    seconds: relative or epoch seconds both work, since arrival times are taken from the first
    request (epoch milliseconds are refused).

    Raises:
        TraceError: the file is missing or not a regular file, unreadable, lacks the columns, has
            rows longer than its header, holds no valid rows, a malformed row, epoch milliseconds,
            or a token count beyond :data:`MAX_TOKENS`.
    """
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise TraceError(f"trace file {path} {problem}")
    frame = _read_csv(path, f"trace file {path}", "its rows have more fields than its header", skipinitialspace=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in AZURE_COLUMNS if c not in frame.columns]
    if missing:
        raise TraceError(f"trace file {path} lacks columns {missing}; expected {AZURE_COLUMNS}")
    if frame.empty:
        raise TraceError(f"trace file {path} holds no requests")
    arrival_s, stamp_bad, stamp_what = _timestamp_seconds(frame["TIMESTAMP"])
    context = pd.to_numeric(frame["ContextTokens"], errors="coerce").to_numpy(float)
    generated = pd.to_numeric(frame["GeneratedTokens"], errors="coerce").to_numpy(float)
    checks = {"TIMESTAMP": (stamp_what, stamp_bad),
              "ContextTokens": ("not a non-negative number", ~(np.isfinite(context) & (context >= 0))),
              "GeneratedTokens": ("not a non-negative number", ~(np.isfinite(generated) & (generated >= 0)))}
    bad = np.logical_or.reduce([wrong for _, wrong in checks.values()])
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        why = "; ".join(f"{col} {str(frame[col].iloc[first])!r} is {what}"
                        for col, (what, wrong) in checks.items() if wrong[first])
        raise TraceError(f"trace file {path}: {int(bad.sum())} malformed rows (first at data row {first + 1}: {why})")
    # Only numeric stamps can reach it: dates become seconds from the first, under 2e10 (pandas' 1677-2262).
    _refuse_beyond(path, "TIMESTAMP", arrival_s, MAX_EPOCH_S,
                   "past the year 5000 as seconds: it looks like epoch milliseconds; give seconds")
    for col, tokens in (("ContextTokens", context), ("GeneratedTokens", generated)):
        _refuse_beyond(path, col, tokens, MAX_TOKENS, f"{MAX_TOKENS:.0e} tokens or more: a typo or a corrupted row")
    order = np.argsort(arrival_s, kind="stable")
    t = arrival_s[order]
    stamps = tuple(f"{str(frame['TIMESTAMP'].iloc[i])!r} at data row {i + 1}" for i in (order[0], order[-1]))
    return RequestTrace(_trace_name(path), t - t[0], context[order].clip(min=1), generated[order].clip(min=1), stamps)


def _refuse_beyond(path: Path, col: str, values: np.ndarray, limit: float, why: str) -> None:
    """Raise a ``TraceError`` naming the first row of column ``col`` at or past ``limit``, saying ``why``."""
    beyond = np.flatnonzero(values >= limit)
    if beyond.size:
        raise TraceError(f"trace file {path}: {col} {values[beyond[0]]:.15g} at data row {beyond[0] + 1} is {why} "
                         f"(rows like it: {beyond.size})")


def _trace_name(path: Path) -> str:
    """The file's name without ``.csv`` and a compression suffix (``conv.csv.gz`` is ``conv``)."""
    return Path(path.stem).stem if path.suffix in COMPRESSED_SUFFIXES else path.stem


def _read_servegen_client(path: Path, data: bytes) -> pd.DataFrame:
    """One client's windows (``data``: the bytes of ``path``), only those with arrivals.

    Raises:
        TraceError: the file is empty, not six fields a row, or a value is missing, negative,
            not finite or beyond :data:`SERVEGEN_MAX_TS_S` / :data:`SERVEGEN_MAX_RATE`.
    """
    frame = _read_csv(io.BytesIO(data), f"ServeGen file {path}",
                      f"rows have more than the {len(SERVEGEN_COLUMNS)} fields {', '.join(SERVEGEN_COLUMNS)}",
                      header=None, names=list(SERVEGEN_COLUMNS), dtype={"dist": str})
    if frame.empty:
        raise TraceError(f"ServeGen file {path} holds no windows")
    numeric = frame[["ts", "rate", "cv", "shape", "scale"]].apply(pd.to_numeric, errors="coerce")
    wrong = ~np.isfinite(numeric) | (numeric < 0)
    if wrong.any().any():
        row = int(np.flatnonzero(wrong.any(axis=1).to_numpy())[0])
        col = str(wrong.columns[wrong.iloc[row].to_numpy()][0])
        value = frame[col].iloc[row]
        raise TraceError(f"ServeGen file {path}: ts, rate, cv, shape, scale must be finite non-negative numbers "
                         f"(row {row + 1}: {col} {'missing' if pd.isna(value) else repr(str(value))})")
    for col, limit, unit in (("ts", SERVEGEN_MAX_TS_S, "s"), ("rate", SERVEGEN_MAX_RATE, "req/s")):
        beyond = np.flatnonzero((numeric[col] > limit).to_numpy())
        if beyond.size:
            raise TraceError(f"ServeGen file {path}: {col} {numeric[col].iloc[beyond[0]]:g} at row {beyond[0] + 1} "
                             f"is beyond {limit:g} {unit}")
    dist = frame["dist"].fillna("").astype(str).str.strip()
    active = numeric["rate"] > 0
    unknown = active & ~dist.isin(["Gamma", "Weibull"])
    if unknown.any():
        raise TraceError(f"ServeGen file {path}: unknown distribution {dist[unknown].iloc[0]!r} (Gamma or Weibull)")
    if (active & (numeric["shape"] <= 0)).any():
        raise TraceError(f"ServeGen file {path}: a window with arrivals has a non-positive shape")
    if (active & (dist == "Weibull") & (numeric["shape"] < SERVEGEN_MIN_WEIBULL_SHAPE)).any():
        raise TraceError(f"ServeGen file {path}: a Weibull window has a shape below {SERVEGEN_MIN_WEIBULL_SHAPE}, "
                         "whose gaps overflow")
    out = numeric.assign(dist=dist)
    return out[active]


def _window_arrivals(rng: np.random.Generator, windows: pd.DataFrame, path: Path) -> np.ndarray:
    """Arrival times (s from trace start) of a renewal process restarted in each window of ``path``.

    The inter-arrival law keeps each window's fitted shape (hence its burstiness) and its scale
    is set so the mean gap is ``1 / rate``: the window's measured request rate is honoured.

    Raises:
        TraceError: a window's law is too heavy-tailed to cover the window (see
            :data:`SERVEGEN_MAX_DOUBLINGS`).
    """
    rate = windows["rate"].to_numpy()
    shape = windows["shape"].to_numpy()
    gamma = (windows["dist"] == "Gamma").to_numpy()
    unit_mean = shape.copy()  # the unit-scale law's mean: k for Gamma(k), Gamma(1 + 1/k) for Weibull(k)
    unit_mean[~gamma] = np.exp([math.lgamma(1.0 + 1.0 / k) for k in shape[~gamma]])
    scale = 1.0 / (rate * unit_mean)
    start = windows["ts"].to_numpy()
    expected = rate * SERVEGEN_WINDOW_S
    need = np.ceil(1.1 * expected + 4.0 * np.sqrt(expected) * np.maximum(windows["cv"].to_numpy(), 1.0) + 20)
    need = need.astype(np.int64)
    limit = need << SERVEGEN_MAX_DOUBLINGS
    out = []
    pending = np.arange(rate.size)
    while pending.size:
        counts = need[pending]
        g = np.repeat(gamma[pending], counts)
        k = np.repeat(shape[pending].astype(np.float32), counts)
        gaps = np.empty(counts.sum())
        gaps[g] = rng.standard_gamma(k[g], dtype=np.float32)
        gaps[~g] = rng.standard_exponential(int((~g).sum()), dtype=np.float32) ** (1.0 / k[~g])
        gaps *= np.repeat(scale[pending], counts)
        ends = np.cumsum(counts)
        csum = np.cumsum(gaps)
        base = np.concatenate([[0.0], csum[ends[:-1] - 1]])
        within = csum - np.repeat(base, counts)
        covered = within[ends - 1] >= SERVEGEN_WINDOW_S
        keep = (within < SERVEGEN_WINDOW_S) & np.repeat(covered, counts)
        out.append((within + np.repeat(start[pending], counts))[keep])
        need[pending[~covered]] *= 2
        pending = pending[~covered]
        over = pending[need[pending] > limit[pending]]
        if over.size:
            w = windows.iloc[over[0]]
            raise TraceError(f"ServeGen file {path}: the window at ts {w['ts']:g} ({w['dist']} shape {w['shape']:g}, "
                             f"rate {w['rate']:g}) does not cover its {SERVEGEN_WINDOW_S:.0f} s in "
                             f"{limit[over[0]]} draws: its inter-arrival law is too heavy-tailed to synthesise")
    return np.concatenate(out) if out else np.empty(0)


def load_servegen(folder: str | Path, step_s: float = 10.0, seed: int = 0, lengths: LengthModel = SERVEGEN_LENGTHS,
                  groups_per_tick: int = 8, cache_dir: str | Path | None = None) -> TickTrace:
    """Synthesise request-level arrivals from a ServeGen folder (``chunk-*-trace.csv``, one per client).

    Deterministic for a seed: clients are read in file-name order, each with its own child seed.
    Token sums per tick are those of i.i.d. draws from ``lengths`` (see :func:`_summed_lengths`);
    ``groups_per_tick`` drawn shapes per tick, weighted, carry per-request scoring. Synthesis
    draws ~3e8 inter-arrival gaps (tens of seconds); with ``cache_dir`` the result is kept in an
    ``.npz`` keyed by the folder's resolved path, the files' names and contents, and every parameter
    (names, sizes and mtimes alone let two folders of the same name share an entry).

    Raises:
        TraceError: the folder is missing or holds no client files, a file is unreadable or
            malformed, or the trace holds no requests.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TraceError(f"ServeGen folder {folder} does not exist")
    files = sorted(folder.glob("chunk-*-trace.csv"), key=lambda p: p.name)
    if not files:
        raise TraceError(f"ServeGen folder {folder} holds no chunk-*-trace.csv client files")
    if not whole_multiple(SERVEGEN_WINDOW_S, step_s):
        raise TraceError(f"step_s must divide the {SERVEGEN_WINDOW_S:.0f} s ServeGen window, got {step_s}")
    contents = hashlib.sha256()
    data = []
    for p in files:
        try:
            data.append(p.read_bytes())
        except OSError as exc:
            raise TraceError(f"ServeGen file {p} cannot be read: {exc.strerror or exc}") from exc
        contents.update(f"{p.name}\0{len(data[-1])}\0".encode())
        contents.update(data[-1])
    key = hashlib.sha256(repr((str(folder.resolve()), contents.hexdigest(), step_s, seed, asdict(lengths),
                               groups_per_tick)).encode()).hexdigest()[:16]
    cached = Path(cache_dir) / f"servegen-{folder.name}-{key}.npz" if cache_dir is not None else None
    hit = _load_cached(cached, folder.name, step_s) if cached is not None else None
    if hit is not None:
        return hit
    clients = [_read_servegen_client(p, raw) for p, raw in zip(files, data)]
    horizon = max((c["ts"].max() for c in clients if not c.empty), default=0.0) + SERVEGEN_WINDOW_S
    n_ticks = int(round(horizon / step_s))
    if n_ticks > MAX_TICKS:
        raise TraceError(f"ServeGen folder {folder}: its windows span {_span(horizon)}, "
                         f"{n_ticks:,} ticks of {step_s:g} s, beyond the {MAX_TICKS:,} a replay holds: give a longer "
                         "tick (--tick-s)")
    seeds = np.random.SeedSequence(seed).spawn(len(clients) + 1)
    count = np.zeros(n_ticks)
    for client, ss, path in zip(clients, seeds[:-1], files):
        if client.empty:
            continue
        arrivals = _window_arrivals(np.random.default_rng(ss), client, path)
        count += np.bincount((arrivals // step_s).astype(np.int64), minlength=n_ticks)[:n_ticks]
    if not count.any():
        raise TraceError(f"ServeGen folder {folder} holds no requests (every window's rate is 0 or too low to draw one)")
    rng = np.random.default_rng(seeds[-1])
    prompt_sum, output_sum = _summed_lengths(rng, count.astype(np.int64), lengths)
    g_prompt, g_output = lengths.draw(rng, n_ticks * groups_per_tick)
    g_tick = np.repeat(np.arange(n_ticks), groups_per_tick)
    groups = RequestGroups(g_tick, g_prompt, g_output, np.repeat(count / groups_per_tick, groups_per_tick))
    if cached is not None:
        _save_cache(cached, count=count, prompt=prompt_sum, output=output_sum, g_tick=g_tick, g_prompt=g_prompt,
                    g_output=g_output, g_weight=groups.weight)
    return TickTrace(folder.name, float(step_s), count, prompt_sum, output_sum, groups)


def whole_multiple(length_s: float, unit_s: float) -> bool:
    """Whether ``length_s`` is a whole number (>= 1) of ``unit_s``: a ServeGen window of ticks, a forecast step
    of a trace's ticks. The quotient is compared with a tolerance: ``600 % 0.1`` is 0.0999... in floating point."""
    n = length_s / unit_s if math.isfinite(unit_s) and unit_s > 0 else 0.0
    return n >= 1 and abs(n - round(n)) <= 1e-9 * n


def _load_cached(cached: Path, name: str, step_s: float) -> TickTrace | None:
    """The trace kept in ``cached``, or None if there is none or it cannot be read (warned: it is synthesised again).

    A run stopped while an older version wrote the file straight to its name left it truncated.
    """
    if not cached.is_file():
        return None
    try:
        with np.load(cached) as z:
            groups = RequestGroups(z["g_tick"], z["g_prompt"], z["g_output"], z["g_weight"])
            return TickTrace(name, float(step_s), z["count"], z["prompt"], z["output"], groups)
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        warnings.warn(f"ServeGen cache {cached} cannot be read ({type(exc).__name__}: {exc}); synthesising again",
                      RuntimeWarning, stacklevel=3)
        return None


def _save_cache(cached: Path, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to a temporary file beside ``cached``, then rename it: an interrupted run leaves no
    truncated entry. A failed write only costs the next run a synthesis, so it is a warning."""
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(partial, "wb") as out:
                np.savez(out, **arrays)
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"ServeGen cache {cached} not written: {exc.strerror or exc}", RuntimeWarning, stacklevel=3)


def _summed_lengths(rng: np.random.Generator, count: np.ndarray, lengths: LengthModel,
                    n_moments: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """Per-tick sums of ``count`` i.i.d. drawn lengths, drawn from their central-limit normal.

    Drawing each of ~2.4e8 lengths costs minutes; a tick's sum of n i.i.d. lengths is normal with
    mean n*mu and variance n*var to well under 1% for the hundreds of requests a tick holds, so
    the sum is drawn directly (mu, var from ``n_moments`` draws of the clipped model).
    """
    p, o = lengths.draw(rng, n_moments)
    sums = []
    for x in (p, o):
        mean = count * x.mean()
        sd = np.sqrt(count * x.var())
        sums.append(np.maximum(rng.normal(mean, sd), count))
    return sums[0], sums[1]


def load_trace(path: str | Path, step_s: float, seed: int = 0, cache_dir: str | Path | None = None) -> TickTrace:
    """A per-request CSV in the Azure format (a file) or a ServeGen folder (a directory)."""
    path = Path(path)
    if path.is_dir():
        return load_servegen(path, step_s=step_s, seed=seed, cache_dir=cache_dir)
    if path.is_file():
        return load_azure_csv(path).to_ticks(step_s)
    raise TraceError(f"trace {path} {file_problem(path)} (give an Azure-format CSV file or a ServeGen folder)")
