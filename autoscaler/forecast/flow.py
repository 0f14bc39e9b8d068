"""The flow forecaster: a conditional normalizing flow over multi-indicator history (ours).

``fit`` trains :class:`~autoscaler.forecast.flow_model.FlowNet` on windows of the
history (chronological hold-out of the last windows for early stopping; the
future it is judged on is never seen). The flow models the log rows *relative to
an anchor*, the median of linear quantile regression on lagged features (refitted
daily, like the ``quantile`` baseline), and sees the anchor as input (its median; other quantile levels
with ``anchor_levels``): the linear seasonal signal comes for free and the network spends its capacity on the shape,
spread and joint structure around it (the anchor stays the median). Each cell's residual quantile
function is then averaged with quantile regression's (weight ``blend_weight``, Vincentization) by a
rank-preserving map, so the joint structure stays the flow's. ``update`` appends rows and, every
``update_every_s`` of new data, takes a few optimiser steps biased to recent
windows (online learning). ``predict`` is one encoder pass and one batched
flow sample under ``torch.no_grad``: no training on the decision path.
The tails of the samples are then stretched away from the median, per tail level (2.5-10%,
90-97.5%), side, step and indicator, by conformal factors from the last day's forecasts whose
outcomes are known (``calibration.py``), recomputed at every ``update``; the samples between the
12.5% and 87.5% quantiles stay as drawn. Residuals beyond ``sample_clip`` spreads are clipped.
``save``/``load`` keep weights, normalisation, optimiser, calibration and the history buffer.
"""

from __future__ import annotations

import copy
import math
import numbers
import pickle
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from .base import Forecast, ForecastInputError, check_history, check_request, indicator_names
from .calibration import band_levels, stretch_tails, tail_factors, tail_levels, tail_scores
from .features import LogScale, WindowSpec
from .flow_model import FlowNet
from .naive import season_steps
from .quantile import LEVELS, QuantileRegression


# Integer fields and their least value.
_LEAST_COUNT = {
    "horizon": 1, "context": 1, "patch": 1, "seasons": 0, "pre": 1, "d_model": 1, "heads": 1, "layers": 1,
    "context_features": 1, "transforms": 1, "bins": 2, "batch_size": 1, "max_epochs": 1, "patience": 1,
    "max_steps_per_epoch": 1, "update_steps": 0, "calibration_knots": 1, "calibration_samples": 1,
    "train_threads": 1, "predict_threads": 1,
}
# Fractions: the interval each must lie in, and its test (False for NaN).
_INTERVALS = {
    "val_frac": ("(0, 1)", lambda v: 0 < v < 1),
    "calibration_level": ("(0, 1)", lambda v: 0 < v < 1),
    "blend_weight": ("[0, 1]", lambda v: 0 <= v <= 1),
    "dropout": ("[0, 1)", lambda v: 0 <= v < 1),
}


@dataclass
class FlowConfig:
    """Sizes and training budget (chosen on ServeGen training days only; see docs/forecasting.md).

    The training budget is counted in work, not time: at most ``max_epochs`` epochs of at most
    ``max_steps_per_epoch`` optimiser steps, stopped early after ``patience`` epochs without a
    better validation NLL; the same seed and data give the same model on a busy or a quiet
    machine. ``max_train_s`` is only a safety guard on ``fit``'s wall time: if it ever ends
    training, ``fit`` warns and ``train_log["wall_cap_hit"]`` says so (the result then depends on
    the machine's speed). One torch thread trains faster than two on a shared 2-core machine.
    Calibration: ``calibration_knots`` tail levels out to the ends of the central ``calibration_level``
    interval (0.025, 0.05, 0.075, 0.1 and mirrored) are calibrated; the stretch returns to none one
    knot spacing inside (0.125 / 0.875), and the samples between those stay as drawn.
    ``history_days``: the most history kept for the online phase (the anchor's daily refit and the
    fine-tuning windows); the default, 28 days, keeps all of a 14-day trace.
    ``sample_clip``: each sampled residual is clipped to this many ``t_std`` (the training residuals'
    std per step and indicator) on either side of the anchor, after the stretch.
    ``anchor_levels``: the quantile-regression levels the network sees (the median, which is the
    anchor, and offsets of the others from it); ``blend_weight``: the weight of quantile regression's
    residual quantile function (15 levels) in each cell's, before the tail calibration (0: the flow's own).
    """

    horizon: int = 6
    context: int = 36
    patch: int = 6
    seasons: int = 2
    pre: int = 6
    d_model: int = 16
    heads: int = 2
    layers: int = 2
    context_features: int = 32
    transforms: int = 3
    hidden_features: tuple[int, ...] = (32, 32)
    bins: int = 8
    dropout: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 20
    patience: int = 10
    max_train_s: float = 3600.0
    max_steps_per_epoch: int = 50
    val_frac: float = 0.15
    update_every_s: float = 6 * 3600.0
    update_steps: int = 40
    update_lr: float = 3e-4
    recent_days: float = 2.0
    calibration_days: float = 1.0
    calibration_level: float = 0.8
    calibration_knots: int = 4
    calibration_samples: int = 128
    sample_clip: float = 8.0
    history_days: float = 28.0
    anchor_levels: tuple[float, ...] = (0.5,)
    blend_weight: float = 0.25
    train_threads: int = 1
    predict_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        """Raises ``ForecastInputError`` naming the first field of the wrong kind or out of its range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, tuple):
                if not isinstance(value, (list, tuple)):
                    raise ForecastInputError(f"{f.name} must be a list, got {value!r}")
            elif not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise ForecastInputError(f"{f.name} must be a number, got {value!r}")
        self.hidden_features = tuple(self.hidden_features)
        self.anchor_levels = tuple(self.anchor_levels)
        for name, least in _LEAST_COUNT.items():
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or value < least:
                raise ForecastInputError(f"{name} must be an integer >= {least}, got {value!r}")
        if not all(isinstance(n, numbers.Integral) and n >= 1 for n in self.hidden_features):
            raise ForecastInputError(f"hidden_features must be integers >= 1, got {self.hidden_features}")
        for name, (interval, inside) in _INTERVALS.items():
            if not inside(getattr(self, name)):
                raise ForecastInputError(f"{name} must lie in {interval}, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "update_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ForecastInputError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not isinstance(self.seed, numbers.Integral):
            raise ForecastInputError(f"seed must be an integer, got {self.seed!r}")
        for name in ("max_train_s", "update_every_s", "recent_days", "calibration_days", "sample_clip"):
            if not getattr(self, name) > 0:
                raise ForecastInputError(f"{name} must be > 0, got {getattr(self, name)!r}")
        least_days = self.seasons + max(self.calibration_days, self.recent_days)
        if not (np.isfinite(self.history_days) and self.history_days >= least_days):
            # Fine-tuning and calibration read the daily lags, the last recent_days and calibration_days.
            raise ForecastInputError(
                f"history_days must be finite and >= seasons + max(calibration_days, recent_days) = {least_days:g}, "
                f"got {self.history_days!r}"
            )
        if self.context % self.patch:
            raise ForecastInputError(f"context {self.context} must be a multiple of patch {self.patch}")
        if self.d_model % self.heads:
            raise ForecastInputError(f"d_model {self.d_model} must be a multiple of heads {self.heads}")
        if not self.calibration_level > 1 / (self.calibration_knots + 1):
            # The stretch returns to none one knot spacing inside the central interval: that must lie below the median.
            raise ForecastInputError(
                f"calibration_level {self.calibration_level} must exceed 1 / (calibration_knots + 1) = "
                f"{1 / (self.calibration_knots + 1):.3g}"
            )
        levels = self.anchor_levels
        if not all(0 < p < 1 for p in levels) or list(levels) != sorted(set(levels)):
            raise ForecastInputError(f"anchor_levels {self.anchor_levels} must increase strictly inside (0, 1)")
        if 0.5 not in self.anchor_levels:
            raise ForecastInputError(f"anchor_levels {self.anchor_levels} must include the median 0.5")
        if self.blend_weight and not set(self.anchor_levels) <= set(LEVELS):
            # One quantile regression serves the anchor and the blend: its levels are LEVELS.
            raise ForecastInputError(f"with blend_weight, anchor_levels {self.anchor_levels} must be among {LEVELS}")


@contextmanager
def _threads(n: int):
    """torch's thread count is process-wide: set it for the block, then restore the caller's."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != before:
            torch.set_num_threads(before)


@contextmanager
def _seeded(seed: int):
    """torch's global RNG (weight initialisation, dropout) seeded for the block, then the caller's state restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class FlowForecaster:
    name = "flow"

    def __init__(self, indicators: tuple[str, ...] | None = None, **config) -> None:
        self.config = FlowConfig(**config)
        self.indicators = indicators
        self.step_s: float | None = None
        self.net: FlowNet | None = None
        self.train_log: dict = {}

    @property
    def horizon(self) -> int:
        """The most steps ahead :meth:`predict` gives: those the network is built for."""
        return self.config.horizon

    # ---- data -------------------------------------------------------------------------------------

    def _setup(self, history: np.ndarray, step_s: float, seen_rows: int) -> None:
        """Log scale, normalisation and anchor fitted on ``history[:seen_rows]``, the rows the training
        windows span (their last target included), so that the validation windows stay a clean hold-out."""
        self.step_s = float(step_s)
        self.indicators = indicator_names(self.indicators, history.shape[1])
        self.window = self._window_spec(history.shape[0], step_s)
        seen = history[:seen_rows]
        self.scale = LogScale.fit(seen)
        z = self.scale.to_log(seen)
        self.z_mean, self.z_std = z.mean(axis=0), z.std(axis=0) + 1e-6
        self.d_std = np.diff(z, axis=0).std(axis=0) + 1e-6
        self.qr = self._fit_qr(seen)
        origins = self._origins(z.shape[0])  # the training windows'
        q = self._anchor(self.qr, seen, origins)
        dz = self.window.target(z, origins) - self._point(q)
        self.t_mean, self.t_std = dz.mean(axis=0), dz.std(axis=0) + 1e-6  # [H, K]

    def _window_spec(self, rows: int, step_s: float) -> WindowSpec:
        """Daily lags only when the history holds enough seasons of them and a season spans the horizon."""
        cfg = self.config
        period = season_steps(step_s)
        enough = rows >= cfg.seasons * period + cfg.pre + cfg.horizon + 4 * cfg.batch_size
        return WindowSpec(cfg.context, cfg.horizon, period, cfg.seasons if enough and cfg.horizon <= period else 0, cfg.pre)

    def validation_start(self, rows: int, step_s: float) -> int:
        """The row of the first validation origin when :meth:`fit` gets ``rows`` rows at ``step_s``.

        An extra training series that covers the same time as the history (a sub-population of it)
        must end here: its windows at the validation times would otherwise train the network on what
        early stopping and the first tail calibration score it on.
        """
        return rows - self.config.horizon - self._split(self._origins(rows, self._window_spec(rows, step_s)).size)[1]

    def _split(self, windows: int) -> tuple[int, int]:
        """(training, validation) window counts; a gap of ``horizon`` windows keeps validation targets out of training."""
        n_val = max(1, int(self.config.val_frac * windows))
        return windows - n_val - self.config.horizon, n_val

    def _fit_qr(self, history: np.ndarray, anchor_only: bool = False) -> QuantileRegression:
        """Quantile regression for the anchor's levels and, with the blend, all of ``LEVELS`` (one model serves both)."""
        cfg = self.config
        levels = LEVELS if cfg.blend_weight and not anchor_only else cfg.anchor_levels
        qr = QuantileRegression(
            horizon=cfg.horizon, levels=levels, indicators=self.indicators, history_days=cfg.history_days
        )
        qr.fit(history, self.step_s)
        return qr

    def _blended(self, y: np.ndarray, lq: np.ndarray, point: np.ndarray) -> np.ndarray:
        """Residual samples ``y [S, H, K]`` (units ``t_std``) with each cell's quantile function averaged with
        quantile regression's (its log quantiles ``lq [Q, H, K]`` at ``LEVELS``, relative to ``point``), weight
        ``blend_weight`` on the latter (Vincentization, quantile averaging). The sample of rank ``r`` moves to
        ``(1 - b) y + b Q((r + 0.5) / S)``: a monotone map per cell, so every cell's ranks, and the joint
        structure, are as the flow drew them."""
        b = self.config.blend_weight
        if not b:
            return y
        lq = lq - point
        u = (np.argsort(np.argsort(y, axis=0), axis=0) + 0.5) / y.shape[0]
        flat_u, flat_q = u.reshape(u.shape[0], -1), lq.reshape(lq.shape[0], -1)
        qr = np.stack([np.interp(flat_u[:, j], LEVELS, flat_q[:, j]) for j in range(flat_q.shape[1])], axis=1)
        return (1 - b) * y + b * qr.reshape(y.shape) / self.t_std

    def _anchor(self, qr: QuantileRegression, history: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """The anchor's predicted quantiles ``[Q, N, H, K]`` (``anchor_levels``) on this forecaster's log scale,
        from rows up to each origin."""
        return self._anchor_rows(self.scale.to_log(qr.quantiles_at(history, origins)), qr)

    def _anchor_rows(self, q: np.ndarray, qr: QuantileRegression) -> np.ndarray:
        """The ``anchor_levels`` rows of ``q``, quantiles at ``qr``'s levels."""
        levels = list(qr.levels)
        return q[[levels.index(p) for p in self.config.anchor_levels]]

    def _point(self, q: np.ndarray) -> np.ndarray:
        """The anchor's median ``[N, H, K]`` from its quantiles ``q [Q, N, H, K]``."""
        return q[self.config.anchor_levels.index(0.5)]

    def _origins(self, rows: int, window: WindowSpec | None = None) -> np.ndarray:
        return np.arange((window or self.window).first_origin, rows - self.config.horizon)

    def _inputs(self, z: np.ndarray, origins: np.ndarray, q: np.ndarray, own_level: bool = False) -> tuple[torch.Tensor, ...]:
        """Changes relative to the origin's value in units of the fitted 1-step std, the level, the anchor's quantiles
        ``q [Q, N, H, K]`` (its median relative to the origin's value, other levels relative to the median;
        concatenated along the step axis: ``[N, Q*H, K]``).

        The level is standardised with the fitted history's log mean/std, or with the series'
        own when ``own_level`` (extra training series of another scale).
        """
        last = z[origins]  # [N, K]
        recent = (self.window.recent(z, origins) - last[:, None]) / self.d_std
        seasonal = (self.window.seasonal(z, origins) - last[:, None, None]) / self.d_std
        mean, std = (z.mean(axis=0), z.std(axis=0) + 1e-6) if own_level else (self.z_mean, self.z_std)
        level = (last - mean) / std
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        point = self._point(q)
        others = [q[i] - point for i, p in enumerate(self.config.anchor_levels) if p != 0.5]
        anchor = np.concatenate([point - last[:, None], *others], axis=1) / self.d_std
        return as_t(recent), as_t(seasonal), as_t(level), as_t(anchor)

    def _dataset(self, history: np.ndarray, qr: QuantileRegression, own_level: bool = False) -> tuple[torch.Tensor, ...]:
        """Inputs and standardised residual targets (log rows minus the anchor's) at every origin."""
        z = self.scale.to_log(history)
        origins = self._origins(z.shape[0])
        q = self._anchor(qr, history, origins)
        y = (self.window.target(z, origins) - self._point(q) - self.t_mean) / self.t_std
        target = torch.as_tensor(y.reshape(len(origins), -1), dtype=torch.float32)
        return (*self._inputs(z, origins, q, own_level), target)

    def _build_net(self) -> FlowNet:
        cfg = self.config
        return FlowNet(
            n_indicators=len(self.indicators),
            horizon=cfg.horizon,
            anchor_rows=len(cfg.anchor_levels),
            context=cfg.context,
            patch=cfg.patch,
            seasons=self.window.seasons,
            season_len=self.window.season_len,
            d_model=cfg.d_model,
            heads=cfg.heads,
            layers=cfg.layers,
            context_features=cfg.context_features,
            transforms=cfg.transforms,
            hidden_features=cfg.hidden_features,
            bins=cfg.bins,
            dropout=cfg.dropout,
        )

    # ---- training ---------------------------------------------------------------------------------

    def fit(self, history: np.ndarray, step_s: float, extra_histories: tuple[np.ndarray, ...] = ()) -> None:
        """Train from scratch on all of ``history [T, K]``; raises ``ForecastInputError`` if it is too short.

        Then the forecaster keeps the last ``history_days`` of rows, and the rows ``update`` adds (the
        oldest dropped at each daily refit of the anchor): fine-tuning and the anchor use those.

        ``extra_histories``: optional other series of the same indicators and step (other traces,
        or sub-populations of this one, e.g. random client subsets) whose windows are added to the
        training set (pre-training data); normalisation and validation come from ``history`` alone.
        A series covering the same time as ``history`` must end at :meth:`validation_start`.
        The log scale, normalisation and the anchor the network trains against are fitted on the rows
        the training windows span, never on the validation windows' targets; after training, the
        anchor is refitted on all of ``history`` for what follows.
        An "epoch" is at most ``max_steps_per_epoch`` optimiser steps, so early stopping
        checks often when the extra data is large.
        """
        cfg = self.config
        arr = check_history(history, min_rows=cfg.context + cfg.horizon + 64)
        # Count the windows (one per origin) before fitting anything: a policy retries every new
        # row until there are enough, and the anchor's quantile regression takes seconds.
        n_train, n_val = self._split(self._origins(arr.shape[0], self._window_spec(arr.shape[0], step_s)).size)
        if n_train < cfg.batch_size:
            raise ForecastInputError(f"flow: {max(n_train, 0)} training windows, need at least {cfg.batch_size}")
        first_val = self.validation_start(arr.shape[0], step_s)  # training targets end before it
        self._setup(arr, step_s, seen_rows=first_val)
        self.history = arr
        data = self._dataset(arr, self.qr)
        train = tuple(d[:n_train] for d in data)
        val = tuple(d[-n_val:] for d in data)
        extra = []
        for h in extra_histories:
            h = check_history(h, arr.shape[1], min_rows=self.window.first_origin + cfg.horizon + 2)
            extra.append(self._dataset(h, self._fit_qr(h, anchor_only=True), own_level=True))
        if extra:
            train = tuple(torch.cat([d, *e]) for d, *e in zip(train, *extra))
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, best_epoch, stale, epochs, steps = float("inf"), None, 0, 0, 0, 0
        stopped_by, steps_per_epoch = "max_epochs", min(cfg.max_steps_per_epoch, -(-train[0].shape[0] // cfg.batch_size))
        start = time.perf_counter()
        order = torch.empty(0, dtype=torch.long)
        with _seeded(cfg.seed), _threads(cfg.train_threads):
            self.net = self._build_net()
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            for epochs in range(1, cfg.max_epochs + 1):
                self.net.train()
                for _ in range(steps_per_epoch):
                    if order.numel() < cfg.batch_size:
                        order = torch.randperm(train[0].shape[0], generator=gen)
                    idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
                    self._step(tuple(d[idx] for d in train))
                    steps += 1
                val_nll = self._nll(val)
                if val_nll < best - 1e-4:
                    best, best_state, best_epoch, stale = val_nll, copy.deepcopy(self.net.state_dict()), epochs, 0
                else:
                    stale += 1
                if stale >= cfg.patience:
                    stopped_by = "patience"
                    break
                if epochs < cfg.max_epochs and time.perf_counter() - start > cfg.max_train_s:
                    stopped_by = "wall_cap"
                    break
        if stopped_by == "wall_cap":
            warnings.warn(
                f"flow: the wall-time guard max_train_s={cfg.max_train_s:g} s ended training after {epochs} of "
                f"{cfg.max_epochs} epochs; this model depends on the machine's speed",
                RuntimeWarning,
                stacklevel=2,
            )
        if best_state is None:
            # Every epoch's validation NLL was NaN or infinite: the weights diverged (a learning rate far too large).
            raise ForecastInputError(f"flow: training diverged, the validation NLL was never finite in {epochs} "
                                     f"epoch(s) (lr={cfg.lr:g}, weight_decay={cfg.weight_decay:g})")
        self.net.load_state_dict(best_state)
        self.net.eval()
        self._start_calibration(first_unseen=first_val)
        self.qr = self._fit_qr(arr)  # the anchor from now on: refitted on the whole fit history, as `quantile` is
        self.history = self.qr.history  # from now on the rows kept: the last history_days, as the anchor's
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.update_lr, weight_decay=cfg.weight_decay)
        self._since_update = 0
        self.train_log = {
            "epochs": epochs,
            "best_epoch": best_epoch,
            "steps": steps,
            "stopped_by": stopped_by,
            "wall_cap_hit": stopped_by == "wall_cap",
            "max_epochs": cfg.max_epochs,
            "patience": cfg.patience,
            "train_windows": int(train[0].shape[0]),
            "val_windows": int(n_val),
            "best_val_nll": best,
            "train_s": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "spread_per_step": self.spread[:, -1, :, 0].tolist(),  # at the 10% / 90% level
        }

    def _step(self, batch: tuple[torch.Tensor, ...]) -> None:
        *inputs, target = batch
        loss = -self.net.log_prob(target, *inputs).mean()
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.optimizer.step()

    @torch.no_grad()
    def _nll(self, data: tuple[torch.Tensor, ...]) -> float:
        self.net.eval()
        *inputs, target = data
        return float(-self.net.log_prob(target, *inputs).mean())

    def update(self, new_rows: np.ndarray) -> None:
        """Take rows that have just completed, one at a time, so a block gives what row-by-row calls give.

        Per row: append it, let the anchor refit on its schedule, fine-tune on recent and older windows
        every ``update_every_s`` of new data, then record the band issued at the new origin with the
        model of that moment. Then the tail factors are recomputed from the outcomes known now.
        """
        if self.net is None:
            raise ForecastInputError("flow: call fit() before update()")
        rows = check_history(new_rows, len(self.indicators), min_rows=0)
        if rows.shape[0] == 0:
            return
        for row in rows[:, None]:
            self.qr.update(row)
            self.history = self.qr.history
            self._since_update += 1
            if self._since_update * self.step_s >= self.config.update_every_s:
                self._since_update = 0
                self._fine_tune()
            self._record_band()
        self.spread = self._spread()

    def _fine_tune(self) -> None:
        cfg = self.config
        data = self._dataset(self.history, self.qr)
        n = data[0].shape[0]
        recent = max(cfg.batch_size, int(cfg.recent_days * 86_400 / self.step_s))
        gen = torch.Generator().manual_seed(cfg.seed + n)
        with _seeded(cfg.seed + n), _threads(cfg.train_threads):
            self.net.train()
            for _ in range(cfg.update_steps):
                # Half the batch from the last `recent_days`, half from all history: adapt without forgetting.
                half = cfg.batch_size // 2
                idx = torch.cat([
                    n - 1 - torch.randint(0, min(recent, n), (half,), generator=gen),
                    torch.randint(0, n, (cfg.batch_size - half,), generator=gen),
                ])
                self._step(tuple(d[idx] for d in data))
            self.net.eval()

    # ---- calibration ------------------------------------------------------------------------------

    @property
    def _levels(self) -> np.ndarray:
        return tail_levels(self.config.calibration_level, self.config.calibration_knots)

    @property
    def _inner(self) -> float:
        """Where the stretch returns to none: one knot spacing inside the central interval's lower end."""
        cfg = self.config
        return (1 - cfg.calibration_level) / 2 * (cfg.calibration_knots + 1) / cfg.calibration_knots

    def _band(self, history: np.ndarray) -> np.ndarray:
        """The uncalibrated flow's quantiles ``[2L+1, H, K]`` (log rows) at ``band_levels`` from ``history``'s last row."""
        cfg = self.config
        noise = torch.randn(cfg.calibration_samples, self.net.features, generator=torch.Generator().manual_seed(cfg.seed))
        y, point = self._raw(history, noise)
        q = np.quantile(y, band_levels(cfg.calibration_level, cfg.calibration_knots), axis=0)
        return q * self.t_std + point

    def _start_calibration(self, first_unseen: int) -> None:
        """Bands at the last ``calibration_days`` origins of the fit history, then the spread.

        Only origins from ``first_unseen`` on (the validation windows' and later: the network never
        trained on their targets) get a band; earlier slots stay NaN, not scored, until online
        origins replace them. In-sample scores would pull the factors down to their floor.
        """
        cfg = self.config
        n, h, k = self.history.shape[0], cfg.horizon, len(self.indicators)
        window = max(1, int(cfg.calibration_days * 86_400 / self.step_s))
        self.bands = np.full((window, 2 * cfg.calibration_knots + 1, h, k), np.nan)
        for i, t in enumerate(range(n - window, n)):
            if t >= max(first_unseen, 0):
                self.bands[i] = self._band(self.history[: t + 1])
        self.spread = self._spread()

    def _outcomes(self) -> np.ndarray:
        """The log rows ``[window, H, K]`` each buffered band forecast, where already known (else NaN)."""
        n, h = self.history.shape[0], self.config.horizon
        z = np.concatenate([self.scale.to_log(self.history), np.full((h, self.history.shape[1]), np.nan)])
        rows = n - len(self.bands) + np.arange(len(self.bands))[:, None] + np.arange(1, h + 1)  # [window, H]
        return np.where((rows >= 0)[..., None], z[np.maximum(rows, 0)], np.nan)

    def _scores(self) -> np.ndarray:
        """Conformal scores ``[window, 2, L, H, K]`` (side, tail level) of the buffered bands against the
        outcomes known now (else NaN)."""
        return tail_scores(self.bands, self._outcomes())

    def _spread(self) -> np.ndarray:
        """Tail factors ``[2, L, H, K]`` (below / above the median, per tail level), all >= 1."""
        return tail_factors(self._scores(), self._levels)

    def _record_band(self) -> None:
        """Buffer the band issued at the newest origin (the last history row), dropping the oldest.

        Each origin's band is computed once, with the model of that moment: the forecasts as they
        were issued. Each (side, step, indicator) is scored only where its outcome is known.
        """
        self.bands = np.concatenate([self.bands[1:], self._band(self.history)[None]])

    # ---- prediction -------------------------------------------------------------------------------

    @torch.no_grad()
    def _raw(self, history: np.ndarray, noise: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated residual samples ``[S, H, K]`` from ``noise [S, H*K]``, each cell's median moved to 0 (then
        blended with quantile regression's, if ``blend_weight``), and the anchor ``[H, K]``: the forecast is
        ``anchor + residual * t_std`` in log rows.

        The anchor is the median; the flow gives the shape, spread and joint structure around it. Its own
        shift of the median learns the training days' level too well: on ServeGen it was neutral on the
        development split and cost CRPS 30-60 min ahead on held-out days where the level moved.
        """
        lq = self.scale.to_log(self.qr.quantiles_at(history, np.array([history.shape[0] - 1])))  # [Q, 1, H, K]
        q = self._anchor_rows(lq, self.qr)
        tail = history[-(self.window.first_origin + 1) :]
        z = self.window.pad(self.scale.to_log(tail))
        inputs = self._inputs(z, np.array([z.shape[0] - 1]), q)
        with _threads(self.config.predict_threads):
            y = self.net.sample(noise, *inputs).numpy()
        y = y.reshape(len(noise), self.config.horizon, -1)
        point = self._point(q)[0]
        return self._blended(y - np.median(y, axis=0), lq[:, 0], point), point

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast:
        """``n_samples`` joint paths ``[n_samples, horizon, K]`` from ``history``'s last row; seeded by ``rng``.

        The flow's samples, their tails stretched by the current factors (the samples between the 12.5%
        and 87.5% quantiles as drawn), each residual then clipped to ``sample_clip`` ``t_std`` of the anchor.
        """
        if self.net is None:
            raise ForecastInputError("flow: call fit() or load() before predict()")
        arr = check_history(history, len(self.indicators))
        check_request(horizon, n_samples, self.config.horizon)
        noise = torch.as_tensor(rng.standard_normal((n_samples, self.net.features)), dtype=torch.float32)
        y, point = self._raw(arr, noise)
        clip = self.config.sample_clip
        y = np.clip(stretch_tails(y, self._levels, self.spread, self._inner), -clip, clip)
        zf = (y * self.t_std + point)[:, :horizon]
        return Forecast(samples=self.scale.from_log(zf), indicators=self.indicators, step_s=self.step_s)

    # ---- persistence ------------------------------------------------------------------------------

    _ARRAYS = ("z_mean", "z_std", "d_std", "t_mean", "t_std", "spread", "bands", "history")
    _KEYS = frozenset({"config", "indicators", "step_s", "window", "offset", "arrays", "since_update", "anchor_rows",
                       "net", "optimizer", "train_log"})

    def save(self, path: str | Path) -> None:
        """Write weights, optimiser, normalisation, calibration state and history to one file (``torch.save``)."""
        if self.net is None:
            raise ForecastInputError("flow: nothing to save before fit()")
        cfg = asdict(self.config)
        cfg["hidden_features"] = list(cfg["hidden_features"])
        cfg["anchor_levels"] = list(cfg["anchor_levels"])
        torch.save(
            {
                "config": cfg,
                "indicators": list(self.indicators),
                "step_s": self.step_s,
                "window": asdict(self.window),
                "offset": torch.as_tensor(self.scale.offset),
                "arrays": {k: torch.as_tensor(getattr(self, k)) for k in self._ARRAYS},
                "since_update": self._since_update,
                "anchor_rows": self.qr.fitted_rows,
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "train_log": self.train_log,
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> "FlowForecaster":
        """Rebuild a fitted forecaster from :meth:`save`'s file; predictions match the saved one's.

        Raises:
            ForecastInputError: the file is not one :meth:`save` wrote with this version's fields
                (unreadable, another object, keys or config fields missing or unknown).
            FileNotFoundError: there is no file at ``path``.
        """
        try:
            state = torch.load(Path(path), weights_only=True)
        except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError) as exc:
            # What torch.load raises on a file that is not a checkpoint (a missing file raises FileNotFoundError).
            raise ForecastInputError(f"{path}: not a file FlowForecaster.save wrote ({exc!r})") from exc
        if not isinstance(state, dict) or not cls._KEYS <= state.keys():
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ForecastInputError(
                f"{path}: not a file FlowForecaster.save wrote (expected keys {sorted(cls._KEYS)}, found {found})"
            )
        known, saved = {f.name for f in fields(FlowConfig)}, state["config"].keys()
        if saved != known:
            raise ForecastInputError(
                f"{path}: saved by another version of the flow (config fields unknown here: {sorted(saved - known)}, "
                f"missing: {sorted(known - saved)}); fit and save it again"
            )
        if not isinstance(state["arrays"], dict) or state["arrays"].keys() != set(cls._ARRAYS):
            found = sorted(state["arrays"]) if isinstance(state["arrays"], dict) else type(state["arrays"]).__name__
            raise ForecastInputError(f"{path}: its arrays are not those save() writes (expected {sorted(cls._ARRAYS)}, "
                                     f"found {found})")
        self = cls(indicators=tuple(state["indicators"]), **state["config"])
        self.step_s = state["step_s"]
        self.window = WindowSpec(**state["window"])
        self.scale = LogScale(offset=state["offset"].numpy())
        for key, value in state["arrays"].items():
            setattr(self, key, value.numpy())
        cfg = self.config
        try:
            self.net = self._build_net()
            self.net.load_state_dict(state["net"])
            self.net.eval()
            self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.update_lr, weight_decay=cfg.weight_decay)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            # Weights that do not fit the network its config and indicators describe (an edited file).
            raise ForecastInputError(f"{path}: its weights do not fit the network its config describes ({exc})") from exc
        self._since_update = state["since_update"]
        rows = state["anchor_rows"]
        self.qr = self._fit_qr(self.history[:rows])
        self.qr.update(self.history[rows:])  # the rows it was fitted on, then the rest: history as saved
        self.train_log = state["train_log"]
        return self
