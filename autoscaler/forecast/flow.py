"""The flow forecaster: a conditional normalizing flow over multi-indicator history (ours).

``fit`` trains :class:`~autoscaler.forecast.flow_model.FlowNet` on windows of the
history (chronological hold-out of the last windows for early stopping; the
future it is judged on is never seen). ``update`` appends rows and, every
``update_every_s`` of new data, takes a few optimiser steps biased to recent
windows (online learning). ``predict`` is one encoder pass and one batched
flow sample under ``torch.no_grad``: no training on the decision path.
``save``/``load`` keep weights, normalisation, optimiser and the history buffer.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .base import Forecast, ForecastInputError, check_history, check_request, indicator_names
from .evaluate import crps
from .features import LogScale, WindowSpec
from .flow_model import FlowNet
from .naive import season_steps


@dataclass
class FlowConfig:
    """Sizes and training budget (chosen on ServeGen training days only; see docs/forecasting.md).

    ``max_train_s`` caps ``fit``'s wall time; one torch thread trains faster than two on a
    shared 2-core machine.
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
    max_epochs: int = 300
    patience: int = 30
    max_train_s: float = 240.0
    max_steps_per_epoch: int = 50
    val_frac: float = 0.15
    input_noise: float = 0.0
    update_every_s: float = 6 * 3600.0
    update_steps: int = 40
    update_lr: float = 3e-4
    recent_days: float = 2.0
    calibration_days: float = 1.0
    temperatures: tuple[float, ...] = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.4)
    calibration_samples: int = 64
    sample_clip: float = 8.0
    train_threads: int = 1
    predict_threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context % self.patch:
            raise ForecastInputError(f"context {self.context} must be a multiple of patch {self.patch}")
        self.hidden_features = tuple(self.hidden_features)
        self.temperatures = tuple(self.temperatures)


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


class FlowForecaster:
    name = "flow"

    def __init__(self, indicators: tuple[str, ...] | None = None, **config) -> None:
        self.config = FlowConfig(**config)
        self.indicators = indicators
        self.step_s: float | None = None
        self.net: FlowNet | None = None
        self.train_log: dict = {}

    # ---- data -------------------------------------------------------------------------------------

    def _setup(self, history: np.ndarray, step_s: float) -> None:
        cfg = self.config
        self.step_s = float(step_s)
        self.indicators = indicator_names(self.indicators, history.shape[1])
        period = season_steps(step_s)
        enough = history.shape[0] >= cfg.seasons * period + cfg.pre + cfg.horizon + 4 * cfg.batch_size
        self.window = WindowSpec(cfg.context, cfg.horizon, period, cfg.seasons if enough else 0, cfg.pre)
        self.scale = LogScale.fit(history)
        z = self.scale.to_log(history)
        self.z_mean, self.z_std = z.mean(axis=0), z.std(axis=0) + 1e-6
        self.d_std = np.diff(z, axis=0).std(axis=0) + 1e-6
        origins = self._origins(z.shape[0])
        dz = self.window.target(z, origins) - z[origins][:, None]
        self.t_mean, self.t_std = dz.mean(axis=0), dz.std(axis=0) + 1e-6  # [H, K]

    def _origins(self, rows: int) -> np.ndarray:
        return np.arange(self.window.first_origin, rows - self.config.horizon)

    def _inputs(self, z: np.ndarray, origins: np.ndarray, own_level: bool = False) -> tuple[torch.Tensor, ...]:
        """Changes relative to the origin's value in units of the fitted 1-step std, and the level.

        The level is standardised with the fitted history's log mean/std, or with the series'
        own when ``own_level`` (extra training series of another scale).
        """
        last = z[origins]  # [N, K]
        recent = (self.window.recent(z, origins) - last[:, None]) / self.d_std
        seasonal = (self.window.seasonal(z, origins) - last[:, None, None]) / self.d_std
        mean, std = (z.mean(axis=0), z.std(axis=0) + 1e-6) if own_level else (self.z_mean, self.z_std)
        level = (last - mean) / std
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
        return as_t(recent), as_t(seasonal), as_t(level)

    def _targets(self, z: np.ndarray, origins: np.ndarray) -> torch.Tensor:
        dz = self.window.target(z, origins) - z[origins][:, None]
        y = (dz - self.t_mean) / self.t_std
        return torch.as_tensor(y.reshape(len(origins), -1), dtype=torch.float32)

    def _dataset(self, history: np.ndarray, own_level: bool = False) -> tuple[torch.Tensor, ...]:
        z = self.scale.to_log(history)
        origins = self._origins(z.shape[0])
        return (*self._inputs(z, origins, own_level), self._targets(z, origins))

    def _build_net(self) -> FlowNet:
        cfg = self.config
        return FlowNet(
            n_indicators=len(self.indicators),
            horizon=cfg.horizon,
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
        """Train from scratch on ``history [T, K]``; raises ``ForecastInputError`` if it is too short.

        ``extra_histories``: optional other series of the same indicators and step (other traces,
        or sub-populations of this one, e.g. random client subsets) whose windows are added to the
        training set (pre-training data); normalisation and validation come from ``history`` alone.
        An "epoch" is at most ``max_steps_per_epoch`` optimiser steps, so early stopping
        checks often when the extra data is large.
        """
        cfg = self.config
        arr = check_history(history, min_rows=cfg.context + cfg.horizon + 64)
        torch.manual_seed(cfg.seed)
        self._setup(arr, step_s)
        self.history = arr
        self.net = self._build_net()
        data = self._dataset(arr)
        n = data[0].shape[0]
        n_val = max(1, int(cfg.val_frac * n))
        # A gap of `horizon` windows keeps validation targets out of the training windows.
        train = tuple(d[: n - n_val - cfg.horizon] for d in data)
        val = tuple(d[n - n_val :] for d in data)
        if train[0].shape[0] < cfg.batch_size:
            raise ForecastInputError(f"flow: {train[0].shape[0]} training windows, need at least {cfg.batch_size}")
        extra = [
            self._dataset(check_history(h, arr.shape[1], min_rows=self.window.first_origin + cfg.horizon + 2), own_level=True)
            for h in extra_histories
        ]
        if extra:
            train = tuple(torch.cat([d, *e]) for d, *e in zip(train, *extra))
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(cfg.seed)
        best, best_state, stale, epochs = float("inf"), None, 0, 0
        start = time.perf_counter()
        order = torch.empty(0, dtype=torch.long)
        with _threads(cfg.train_threads):
            for epochs in range(1, cfg.max_epochs + 1):
                self.net.train()
                for _ in range(min(cfg.max_steps_per_epoch, -(-train[0].shape[0] // cfg.batch_size))):
                    if order.numel() < cfg.batch_size:
                        order = torch.randperm(train[0].shape[0], generator=gen)
                    idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
                    self._step(tuple(d[idx] for d in train))
                val_nll = self._nll(val)
                if val_nll < best - 1e-4:
                    best, best_state, stale = val_nll, copy.deepcopy(self.net.state_dict()), 0
                else:
                    stale += 1
                if stale >= cfg.patience or time.perf_counter() - start > cfg.max_train_s:
                    break
        self.net.load_state_dict(best_state)
        self.net.eval()
        self.temperature = self._calibrate(val)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.update_lr, weight_decay=cfg.weight_decay)
        self._since_update = 0
        self.train_log = {
            "epochs": epochs,
            "train_windows": int(train[0].shape[0]),
            "val_windows": int(n_val),
            "best_val_nll": best,
            "train_s": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "temperature": self.temperature,
        }

    def _step(self, batch: tuple[torch.Tensor, ...]) -> None:
        *inputs, target = batch
        if self.config.input_noise:
            # Jitter the normalised history (not the target): a regulariser for a few thousand windows.
            inputs = [x + self.config.input_noise * torch.randn_like(x) for x in inputs]
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

    @torch.no_grad()
    def _calibrate(self, data: tuple[torch.Tensor, ...]) -> float:
        """Base-noise temperature with the lowest CRPS on ``data``'s windows (standardised targets).

        A flow fitted on a few days is often too sharp when volatility shifts; scaling the
        base noise widens or narrows every sample path together, and picking the scale by
        CRPS on windows whose outcomes are already known keeps intervals honest (online
        recalibration, in the spirit of adaptive conformal inference, Gibbs & Candes 2021).
        """
        *inputs, target = data
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        noise = torch.randn(cfg.calibration_samples, target.shape[0], target.shape[1], generator=gen)
        with _threads(cfg.train_threads):
            dist = self.net.flow(self.net.encoder(*inputs))
            scores = [
                float(crps(dist.transform.inv(tau * noise).numpy(), target.numpy()).mean()) for tau in cfg.temperatures
            ]
        return float(cfg.temperatures[int(np.argmin(scores))])

    def update(self, new_rows: np.ndarray) -> None:
        """Append rows; every ``update_every_s`` of new data, fine-tune on recent and older windows.

        After fine-tuning, the sampling temperature is re-chosen on the last
        ``calibration_days`` of windows, whose outcomes are all observed by now.
        """
        if self.net is None:
            raise ForecastInputError("flow: call fit() before update()")
        rows = check_history(new_rows, len(self.indicators), min_rows=0)
        self.history = np.concatenate([self.history, rows])
        self._since_update += rows.shape[0]
        if self._since_update * self.step_s < self.config.update_every_s:
            return
        self._since_update = 0
        cfg = self.config
        data = self._dataset(self.history)
        n = data[0].shape[0]
        recent = max(cfg.batch_size, int(cfg.recent_days * 86_400 / self.step_s))
        gen = torch.Generator().manual_seed(cfg.seed + n)
        with _threads(cfg.train_threads):
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
            calib = max(1, int(cfg.calibration_days * 86_400 / self.step_s))
            self.temperature = self._calibrate(tuple(d[n - calib :] for d in data))

    # ---- prediction -------------------------------------------------------------------------------

    @torch.no_grad()
    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast:
        """``n_samples`` joint paths ``[n_samples, horizon, K]`` from ``history``'s last row; seeded by ``rng``."""
        if self.net is None:
            raise ForecastInputError("flow: call fit() or load() before predict()")
        arr = check_history(history, len(self.indicators))
        check_request(horizon, n_samples, self.config.horizon)
        tail = arr[-(self.window.first_origin + 1) :]
        z = self.window.pad(self.scale.to_log(tail))
        origin = np.array([z.shape[0] - 1])
        inputs = self._inputs(z, origin)
        with _threads(self.config.predict_threads):
            noise = torch.as_tensor(rng.standard_normal((n_samples, self.net.features)) * self.temperature, dtype=torch.float32)
            y = self.net.sample(noise, *inputs).numpy().reshape(n_samples, self.config.horizon, -1)
        y = np.clip(y, -self.config.sample_clip, self.config.sample_clip)
        dz = y[:, :horizon] * self.t_std[:horizon] + self.t_mean[:horizon]
        return Forecast(samples=self.scale.from_log(z[-1] + dz), indicators=self.indicators, step_s=self.step_s)

    # ---- persistence ------------------------------------------------------------------------------

    _ARRAYS = ("z_mean", "z_std", "d_std", "t_mean", "t_std", "history")

    def save(self, path: str | Path) -> None:
        """Write weights, optimiser, normalisation and history to one file (``torch.save``)."""
        if self.net is None:
            raise ForecastInputError("flow: nothing to save before fit()")
        cfg = asdict(self.config)
        cfg["hidden_features"] = list(cfg["hidden_features"])
        cfg["temperatures"] = list(cfg["temperatures"])
        torch.save(
            {
                "config": cfg,
                "indicators": list(self.indicators),
                "step_s": self.step_s,
                "window": asdict(self.window),
                "offset": torch.as_tensor(self.scale.offset),
                "arrays": {k: torch.as_tensor(getattr(self, k)) for k in self._ARRAYS},
                "since_update": self._since_update,
                "temperature": self.temperature,
                "net": self.net.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "train_log": self.train_log,
            },
            Path(path),
        )

    @classmethod
    def load(cls, path: str | Path) -> "FlowForecaster":
        """Rebuild a fitted forecaster from :meth:`save`'s file; predictions match the saved one's."""
        state = torch.load(Path(path), weights_only=True)
        self = cls(indicators=tuple(state["indicators"]), **state["config"])
        self.step_s = state["step_s"]
        self.window = WindowSpec(**state["window"])
        self.scale = LogScale(offset=state["offset"].numpy())
        for key, value in state["arrays"].items():
            setattr(self, key, value.numpy())
        cfg = self.config
        self.net = self._build_net()
        self.net.load_state_dict(state["net"])
        self.net.eval()
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.update_lr, weight_decay=cfg.weight_decay)
        self.optimizer.load_state_dict(state["optimizer"])
        self._since_update = state["since_update"]
        self.temperature = state["temperature"]
        self.train_log = state["train_log"]
        return self
