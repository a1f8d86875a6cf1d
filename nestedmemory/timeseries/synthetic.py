"""Deterministic synthetic time series, so every time-series path runs offline and in CI (DATA.md §3.4,
NEXT-WAVE.md §2.5). Every generator draws from ``numpy.random.default_rng(seed)`` only. All are synthetic: label
any result on them as such.

* :func:`synthetic_ett`: an ETT-like table (``date, HUFL, HULL, MUFL, MULL, LUFL, LULL, OT``) whose target depends
  on the *lagged* load variates, so a model that mixes channels can forecast OT much better than one that sees
  OT's history only.
* :func:`lead_lag_classification`: class = whether variate 1 lags or leads variate 0; every single channel has the
  same distribution in both classes.
* :func:`synthetic_anomaly`: a clean training series and a test series with labelled injected anomalies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from .data import DataError

__all__ = ["ETT_COLUMNS", "synthetic_ett", "lead_lag_classification", "synthetic_anomaly"]

ETT_COLUMNS = ("date", "HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT")
#: steps per day of the supported frequencies (ETTh: hourly, ETTm: 15 minutes).
STEPS_PER_DAY = {"h": 24, "15min": 96}


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], phi: float, std: float) -> np.ndarray:
    """Stationary AR(1) paths along the last axis: ``a_t = φ a_{t−1} + ε_t`` with stationary standard deviation
    ``std`` (the first value drawn from the stationary law)."""
    noise = rng.standard_normal(shape) * std * np.sqrt(1 - phi ** 2)
    noise[..., 0] = rng.standard_normal(shape[:-1]) * std
    return lfilter([1.0], [1.0, -phi], noise, axis=-1)


def synthetic_ett(rows: int = 17420, freq: str = "h", seed: int = 0, lag: int = 48) -> pd.DataFrame:
    """An ETT-like DataFrame ``date, HUFL, HULL, MUFL, MULL, LUFL, LULL, OT`` (DATA.md §3.4), dates from
    2016-07-01 00:00 every hour (``freq="h"``, ETTh: 17,420 rows) or 15 minutes (``"15min"``, ETTm: 69,680).

    * Three latent drivers ``z_k``: daily and weekly sinusoids (random amplitude and phase), a slow trend (a
      piecewise-linear random walk with a knot every 30 days), AR(1) noise (``φ = 0.9`` per step, the largest part)
      and regimes (level shifts of 1–7 days, about one every 10 days).
    * Six loads ``x = W z + AR(1) noise`` (``φ = 0.5``) in three strongly correlated pairs (HUFL/HULL, MUFL/MULL,
      LUFL/LULL: the second row of ``W`` is 0.8 × the first plus a little), then offset and scaled to ETT-like
      magnitudes.
    * ``OT(t) = 15 + 5·tanh(m(t − lag) / std(m)) + daily seasonal + noise``, ``m`` the mean of the standardised
      loads. For a horizon ``h ≤ lag`` the loads already hold what decides ``OT(t + h)``; OT's own history only
      holds ``m`` up to ``t − lag``, whose AR part has decayed by ``0.9^h``.
    """
    if freq not in STEPS_PER_DAY:
        raise DataError(f"unknown freq {freq!r}: choose one of {', '.join(STEPS_PER_DAY)}")
    if rows < 1 or lag < 1:
        raise DataError(f"rows and lag must be >= 1, got rows={rows}, lag={lag}")
    rng = np.random.default_rng(seed)
    day = STEPS_PER_DAY[freq]
    n = rows + lag  # the first ``lag`` steps only feed OT's lagged input
    t = np.arange(n)
    drivers = 3
    phase = rng.uniform(0, 2 * np.pi, (drivers, 2))
    amplitude = rng.uniform(0.3, 0.6, (drivers, 2))
    seasonal = (amplitude[:, :1] * np.sin(2 * np.pi * t / day + phase[:, :1])
                + amplitude[:, 1:] * np.sin(2 * np.pi * t / (7 * day) + phase[:, 1:]))
    knots = np.arange(0, n + 30 * day, 30 * day)
    trend = np.stack([np.interp(t, knots, np.cumsum(rng.normal(0, 0.2, len(knots)))) for _ in range(drivers)])
    regimes = np.zeros((drivers, n))
    for _ in range(max(1, n // (10 * day))):
        k, start = rng.integers(drivers), rng.integers(n)
        regimes[k, start:start + rng.integers(day, 7 * day + 1)] += rng.normal(0, 0.6)
    z = seasonal + trend + regimes + _ar1(rng, (drivers, n), 0.9, 1.0)
    base = rng.normal(0, 1, (3, drivers))
    weights = np.repeat(base, 2, axis=0)
    weights[1::2] = 0.8 * base + rng.normal(0, 0.2, base.shape)
    loads = weights @ z + _ar1(rng, (6, n), 0.5, 0.3)
    loads_std = (loads - loads.mean(1, keepdims=True)) / loads.std(1, keepdims=True)
    m = loads_std.mean(0)
    drive = 5.0 * np.tanh(m / m.std())
    ot = (15.0 + drive[:-lag] + 1.0 * np.sin(2 * np.pi * t[lag:] / day + rng.uniform(0, 2 * np.pi))
          + rng.normal(0, 0.3, rows))
    offset, scale = rng.uniform(2, 10, (6, 1)), rng.uniform(0.5, 3, (6, 1))
    values = np.vstack([offset + scale * loads[:, lag:], ot])
    dates = pd.date_range("2016-07-01 00:00", periods=rows, freq=freq).strftime("%Y-%m-%d %H:%M:%S")
    frame = pd.DataFrame(values.T.round(6), columns=list(ETT_COLUMNS[1:]))
    frame.insert(0, "date", dates)
    return frame


def lead_lag_classification(samples: int = 256, length: int = 96, variates: int = 4, lag: int = 8,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x [samples, length, variates] float32, y [samples] int64)``: class 0 when variate 1 *lags* variate 0 by
    ``lag`` steps (``x₁(t) = x₀(t − lag)``), class 1 when it *leads* (``x₁(t) = x₀(t + lag)``); NEXT-WAVE.md
    §2.5.2. Both are windows of one stationary AR(1) path (``φ = 0.7``), so each channel alone has the same law
    in both classes (a channel-independent model is at chance); variates 2… are independent AR(1) distractors.
    Every channel gets independent noise (std 0.1). Classes are balanced (``samples // 2`` of class 1)."""
    if variates < 2 or lag < 1 or length < 1 or samples < 1:
        raise DataError(f"lead_lag_classification needs variates >= 2, lag >= 1, length >= 1, samples >= 1; got "
                        f"variates={variates}, lag={lag}, length={length}, samples={samples}")
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(samples) % 2).astype(np.int64)
    source = _ar1(rng, (samples, length + 2 * lag), 0.7, 1.0)
    x = np.empty((samples, length, variates))
    x[:, :, 0] = source[:, lag:lag + length]
    for i in range(samples):
        shift = 2 * lag if y[i] else 0  # lead: x₁(t) = s(t + 2·lag) = x₀(t + lag); lag: x₁(t) = s(t) = x₀(t − lag)
        x[i, :, 1] = source[i, shift:shift + length]
    x[:, :, 2:] = _ar1(rng, (samples, variates - 2, length), 0.7, 1.0).transpose(0, 2, 1)
    x += rng.normal(0, 0.1, x.shape)
    return x.astype(np.float32), y


def synthetic_anomaly(rows: int = 2000, variates: int = 5,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train [rows, variates], test [rows, variates], test_labels [rows])`` float64 / int64.

    Normal behaviour: per variate two sinusoids (periods 50 and 120 steps, random amplitude and phase) plus a
    shared AR(1) factor (random loadings) and noise (std 0.1); train and test are consecutive stretches of it. The
    test series gets ``max(3, rows // 250)`` non-overlapping labelled anomalies, cycling through three kinds on a
    random half of the variates: a *spike* (1–3 steps, ±5), a *level shift* (20–60 steps, ±3) and a *pattern
    change* (30–80 steps where the sinusoids run at 3× their frequency)."""
    if rows < 400 or variates < 1:
        raise DataError(f"synthetic_anomaly needs rows >= 400 and variates >= 1, got rows={rows}, "
                        f"variates={variates}")
    rng = np.random.default_rng(seed)
    periods = np.array([50.0, 120.0])
    amplitude = rng.uniform(0.5, 1.5, (variates, 2))
    phase = rng.uniform(0, 2 * np.pi, (variates, 2))
    loading = rng.normal(0, 0.5, variates)
    factor = _ar1(rng, (2 * rows,), 0.95, 1.0)
    noise = rng.normal(0, 0.1, (2 * rows, variates))

    def sines(t: np.ndarray, speed: float = 1.0) -> np.ndarray:
        arg = 2 * np.pi * speed * t[:, None, None] / periods + phase
        return np.sum(amplitude * np.sin(arg), axis=-1)

    t = np.arange(2 * rows, dtype=np.float64)
    series = sines(t) + factor[:, None] * loading + noise
    train, test = series[:rows], series[rows:].copy()
    labels = np.zeros(rows, dtype=np.int64)
    events = max(3, rows // 250)
    slot = rows // events
    for e in range(events):
        kind = e % 3
        length = int(rng.integers(*((1, 4), (20, 61), (30, 81))[kind]))
        start = e * slot + int(rng.integers(10, max(11, slot - length - 10)))
        span = slice(start, start + length)
        chosen = rng.permutation(variates)[:max(1, variates // 2)]
        if kind == 2:
            test[span, chosen] += (sines(t[rows:][span], 3.0) - sines(t[rows:][span]))[:, chosen]
        else:
            test[span, chosen] += rng.choice([-1.0, 1.0]) * (5.0 if kind == 0 else 3.0)
        labels[span] = 1
    return train, test, labels
