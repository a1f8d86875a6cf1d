"""Time-series metrics in the Time-Series-Library protocol (thuml/Time-Series-Library ``utils/metrics.py``,
``utils/tools.py``, ``exp/exp_anomaly_detection.py``).

Forecasting metrics take arrays of any (equal) shape and average over every element, as TSLib does on
``[windows, pred_len, C]`` (on the *scaled* data: TSLib's ``--inverse`` is off by default). Mismatched shapes or an
``anomaly_ratio`` outside (0, 100) raise :class:`~nestedmemory.timeseries.data.DataError`.
"""

from __future__ import annotations

import numpy as np

from .data import DataError

__all__ = ["mae", "mse", "rmse", "mape", "mspe", "rse", "corr", "forecast_metrics", "accuracy",
           "anomaly_threshold", "point_adjust", "precision_recall_f1", "anomaly_scores"]


def _pair(pred, true) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise DataError(f"prediction shape {pred.shape} differs from truth shape {true.shape}")
    return pred, true


def mae(pred, true) -> float:
    """TSLib ``MAE``: ``mean |true − pred|``."""
    pred, true = _pair(pred, true)
    return float(np.mean(np.abs(true - pred)))


def mse(pred, true) -> float:
    """TSLib ``MSE``: ``mean (true − pred)²``."""
    pred, true = _pair(pred, true)
    return float(np.mean((true - pred) ** 2))


def rmse(pred, true) -> float:
    """TSLib ``RMSE``: ``√MSE``."""
    return float(np.sqrt(mse(pred, true)))


def mape(pred, true) -> float:
    """TSLib ``MAPE``: ``mean |(true − pred) / true|`` (no guard: infinite where ``true`` is 0, as in TSLib; on
    standardised data it is dominated by values near 0)."""
    pred, true = _pair(pred, true)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.abs((true - pred) / true)))


def mspe(pred, true) -> float:
    """TSLib ``MSPE``: ``mean ((true − pred) / true)²`` (same caveat as :func:`mape`)."""
    pred, true = _pair(pred, true)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(np.square((true - pred) / true)))


def rse(pred, true) -> float:
    """TSLib ``RSE`` (root relative squared error): ``√Σ(true − pred)² / √Σ(true − mean(true))²``."""
    pred, true = _pair(pred, true)
    return float(np.sqrt(np.sum((true - pred) ** 2)) / np.sqrt(np.sum((true - true.mean()) ** 2)))


def corr(pred, true) -> float:
    """TSLib ``CORR``, exactly: per column over axis 0, ``Σ(t − t̄)(p − p̄) / √Σ(t − t̄)²(p − p̄)²``, averaged over
    the last axis. Note the denominator is *not* Pearson's ``√(Σ(t − t̄)² · Σ(p − p̄)²)`` (TSLib inherits this from
    LSTNet/Informer), so the value is not bounded by 1; it is kept for comparison with TSLib's printouts."""
    pred, true = _pair(pred, true)
    dt, dp = true - true.mean(0), pred - pred.mean(0)
    return float(np.mean(np.sum(dt * dp, 0) / np.sqrt(np.sum(dt ** 2 * dp ** 2, 0)), -1))


def forecast_metrics(pred, true) -> dict[str, float]:
    """TSLib's ``metric(pred, true)``: ``{"mae", "mse", "rmse", "mape", "mspe"}``."""
    return {"mae": mae(pred, true), "mse": mse(pred, true), "rmse": rmse(pred, true), "mape": mape(pred, true),
            "mspe": mspe(pred, true)}


def accuracy(pred, true) -> float:
    """TSLib ``cal_accuracy``: the share of ``pred == true``; ``pred`` may be class scores ``[N, K]`` (its argmax
    is taken, as ``exp_classification`` does after a softmax)."""
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.ndim == true.ndim + 1:
        pred = pred.argmax(-1)
    if pred.shape != true.shape:
        raise DataError(f"prediction shape {pred.shape} differs from label shape {true.shape}")
    return float(np.mean(pred == true))


def anomaly_threshold(train_energy, test_energy, anomaly_ratio: float) -> float:
    """TSLib's threshold: the ``100 − anomaly_ratio`` percentile (``anomaly_ratio`` in %) of the train and test
    reconstruction energies together (``exp_anomaly_detection.test``, step 2)."""
    if not 0 < anomaly_ratio < 100:
        raise DataError(f"anomaly_ratio is a percentage in (0, 100), got {anomaly_ratio}")
    energy = np.concatenate([np.ravel(train_energy), np.ravel(test_energy)])
    return float(np.percentile(energy, 100 - anomaly_ratio))


def point_adjust(pred, gt) -> np.ndarray:
    """TSLib's ``adjustment`` (``utils/tools.py``): if any point of a ground-truth anomaly segment (a maximal run
    of ``gt == 1``) is predicted, the whole segment counts as predicted. Returns the adjusted copy of ``pred``."""
    pred, gt = np.asarray(pred).astype(np.int64).ravel(), np.asarray(gt).astype(np.int64).ravel()
    if pred.shape != gt.shape:
        raise DataError(f"prediction length {pred.size} differs from label length {gt.size}")
    edges = np.diff(np.concatenate([[0], gt, [0]]))
    adjusted = pred.copy()
    for start, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if pred[start:stop].any():
            adjusted[start:stop] = 1
    return adjusted


def precision_recall_f1(pred, gt) -> tuple[float, float, float]:
    """Binary precision, recall and F1 of ``pred`` against ``gt`` (sklearn's ``precision_recall_fscore_support(
    average='binary')`` as TSLib calls it; 0 where a ratio is 0/0, sklearn's ``zero_division`` result)."""
    pred, gt = np.asarray(pred).ravel() == 1, np.asarray(gt).ravel() == 1
    if pred.shape != gt.shape:
        raise DataError(f"prediction length {pred.size} differs from label length {gt.size}")
    hits = float(np.sum(pred & gt))
    precision = hits / pred.sum() if pred.any() else 0.0
    recall = hits / gt.sum() if gt.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(f1)


def anomaly_scores(train_energy, test_energy, test_labels, anomaly_ratio: float) -> dict[str, float]:
    """TSLib's anomaly evaluation: threshold (:func:`anomaly_threshold`), ``pred = test_energy > threshold``,
    then accuracy / precision / recall / F1 both as is and after :func:`point_adjust` (keys suffixed ``_pa``;
    TSLib reports only the adjusted ones, which flatter detectors, so both are kept)."""
    energy, gt = np.ravel(test_energy), np.ravel(test_labels).astype(np.int64)
    if energy.shape != gt.shape:
        raise DataError(f"{energy.size} test energies for {gt.size} labels")
    threshold = anomaly_threshold(train_energy, energy, anomaly_ratio)
    pred = (energy > threshold).astype(np.int64)
    out = {"threshold": threshold}
    for suffix, p in (("", pred), ("_pa", point_adjust(pred, gt))):
        precision, recall, f1 = precision_recall_f1(p, gt)
        out.update({f"accuracy{suffix}": float(np.mean(p == gt)), f"precision{suffix}": precision,
                    f"recall{suffix}": recall, f"f1{suffix}": f1})
    return out
