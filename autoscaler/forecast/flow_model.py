"""The network of the flow forecaster: cross-indicator attention encoder + conditional spline flow.

Following HARMONY's idea that indicators explain each other, every (time patch,
indicator) pair is one token and a small transformer lets all tokens attend to
all others, across time and across indicators. The pooled encoding conditions a
normalizing flow (zuko) over the whole ``horizon x indicators`` block: an
element-wise rational-quadratic spline (Durkan et al., 2019) shapes each
marginal (skewed, heavy-tailed), affine coupling layers (Dinh et al., 2017)
couple the dimensions, so samples are joint paths, non-Gaussian and correlated
across indicators and steps.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from zuko.distributions import DiagNormal
from zuko.flows.autoregressive import MaskedAutoregressiveTransform
from zuko.lazy import Flow, UnconditionalDistribution
from zuko.transforms import MonotonicRQSTransform


class IndicatorAttentionEncoder(nn.Module):
    """Tokens: recent patches, one token per earlier day's window, a level and an anchor token, per indicator.

    Inputs (all already normalised): ``recent [B, context, K]`` (context divisible
    by ``patch``), ``seasonal [B, seasons, season_len, K]``, ``level [B, K]``,
    ``anchor [B, anchor_rows * horizon, K]`` (a point forecast's log-changes, then optionally other quantiles'
    offsets from it; see ``flow.py``).
    Output ``[B, context_features]``.
    """

    def __init__(
        self,
        n_indicators: int,
        horizon: int,
        context: int,
        patch: int,
        seasons: int,
        season_len: int,
        d_model: int,
        heads: int,
        layers: int,
        context_features: int,
        dropout: float,
        anchor_rows: int = 1,
    ) -> None:
        super().__init__()
        self.patch, self.seasons = patch, seasons
        n_slots = context // patch + seasons + 2
        self.recent_embed = nn.Linear(patch, d_model)
        self.season_embed = nn.Linear(season_len, d_model) if seasons else None
        self.level_embed = nn.Linear(1, d_model)
        self.anchor_embed = nn.Linear(anchor_rows * horizon, d_model)
        self.slot = nn.Parameter(torch.randn(n_slots, d_model) * 0.02)
        self.indicator = nn.Parameter(torch.randn(n_indicators, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Linear(n_indicators * d_model, context_features), nn.GELU())
        # A linear path from the raw last patch, earlier days, level and anchor: the strong linear
        # predictors stay one layer away while the attention learns the interactions.
        n_direct = n_indicators * (patch + seasons * season_len + 1 + anchor_rows * horizon)
        self.direct = nn.Linear(n_direct, context_features)

    def forward(self, recent: torch.Tensor, seasonal: torch.Tensor, level: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        b, c, k = recent.shape
        patches = recent.transpose(1, 2).reshape(b, k, c // self.patch, self.patch)
        tokens = [self.recent_embed(patches)]
        if self.season_embed is not None:
            tokens.append(self.season_embed(seasonal.permute(0, 3, 1, 2)))  # [B, K, seasons, d]
        tokens.append(self.level_embed(level[..., None, None]))  # [B, K, 1, d]
        tokens.append(self.anchor_embed(anchor.transpose(1, 2))[:, :, None])  # [B, K, 1, d]
        x = torch.cat(tokens, dim=2) + self.slot + self.indicator[:, None, :]
        slots = x.shape[2]
        x = self.encoder(x.reshape(b, k * slots, -1)).reshape(b, k, slots, -1)
        raw = torch.cat([recent[:, -self.patch :].reshape(b, -1), seasonal.reshape(b, -1), level, anchor.reshape(b, -1)], dim=1)
        return self.head(self.norm(x.mean(dim=2)).reshape(b, -1)) + self.direct(raw)


def coupling_orders(horizon: int, n_indicators: int) -> list[torch.Tensor]:
    """Feature ranks for the coupling layers over the flattened ``[horizon, K]`` block (index ``h*K + k``).

    A coupling with ``passes=2`` transforms the lower half of the ranks from the context alone
    and the upper half conditioned on them. Splitting by indicator parity couples indicators at
    the same step (a contiguous split would keep ``(h, 0)`` and ``(h, 1)`` on the same side in
    every layer, leaving them independent); splitting by step parity couples steps. Each split
    is used in both directions.
    """
    h, k = torch.meshgrid(torch.arange(horizon), torch.arange(n_indicators), indexing="ij")
    h, k = h.reshape(-1), k.reshape(-1)
    keys = []
    if n_indicators > 1:
        keys.append(k % 2 * horizon * n_indicators + h * n_indicators + k)
    if horizon > 1:
        keys.append(h % 2 * horizon * n_indicators + k * horizon + h)
    if not keys:
        keys.append(torch.zeros(1, dtype=torch.long))
    orders = []
    for key in keys:
        rank = torch.empty_like(key)
        rank[torch.argsort(key)] = torch.arange(key.numel())
        orders += [rank, key.numel() - 1 - rank]
    return orders


class FlowNet(nn.Module):
    """Encoder + conditional flow over ``horizon * K`` standardised log-changes.

    Every transform inverts in at most two network passes (the spline is
    element-wise given the context, the couplings split the features in two),
    so drawing samples costs about as much as evaluating a density: a
    fully autoregressive flow would need one pass per feature.
    """

    def __init__(
        self,
        n_indicators: int,
        horizon: int,
        context: int,
        patch: int,
        seasons: int,
        season_len: int,
        d_model: int = 32,
        heads: int = 2,
        layers: int = 2,
        context_features: int = 64,
        transforms: int = 3,
        hidden_features: tuple[int, ...] = (64, 64),
        bins: int = 8,
        dropout: float = 0.0,
        anchor_rows: int = 1,
    ) -> None:
        super().__init__()
        self.encoder = IndicatorAttentionEncoder(
            n_indicators, horizon, context, patch, seasons, season_len, d_model, heads, layers, context_features, dropout,
            anchor_rows,
        )
        features = horizon * n_indicators
        self.features = features
        hidden = tuple(hidden_features)
        spline = MaskedAutoregressiveTransform(
            features,
            context_features,
            passes=1,
            univariate=partial(MonotonicRQSTransform, slope=1e-3),
            shapes=[(bins,), (bins,), (bins - 1,)],
            hidden_features=hidden,
        )
        orders = coupling_orders(horizon, n_indicators)
        couplings = [
            MaskedAutoregressiveTransform(
                features,
                context_features,
                passes=min(2, features),
                order=orders[i % len(orders)],
                hidden_features=hidden,
            )
            for i in range(transforms)
        ]
        base = UnconditionalDistribution(DiagNormal, torch.zeros(features), torch.ones(features), buffer=True)
        self.flow = Flow([spline, *couplings], base)

    def log_prob(self, target: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """``target [B, horizon * K]`` -> ``[B]`` log-densities; ``inputs`` as the encoder's."""
        return self.flow(self.encoder(*inputs)).log_prob(target)

    def sample(self, noise: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """Map base noise ``[n, horizon * K]`` (or ``[n, B, horizon * K]`` for B origins) to samples; the encoder runs once.

        Taking the noise from the caller keeps sampling reproducible without touching torch's global RNG.
        """
        return self.flow(self.encoder(*inputs)).transform.inv(noise)
