"""TSLib's metrics (``utils/metrics.py``, ``utils/tools.py``, ``exp/exp_anomaly_detection.py``) against values
computed by hand."""

import math

import numpy as np
import pytest

from nestedmemory.timeseries.data import DataError
from nestedmemory.timeseries.metrics import (accuracy, anomaly_scores, anomaly_threshold, corr, forecast_metrics,
                                             mae, mape, mse, mspe, point_adjust, precision_recall_f1, rmse, rse)

PRED = np.array([[1.0, 2.0], [3.0, 4.0]])
TRUE = np.array([[2.0, 2.0], [1.0, 5.0]])  # true − pred = [[1, 0], [−2, 1]]
GT = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1])  # anomaly segments [1, 3], [6, 7], [9]


def test_forecast_metrics_by_hand():
    assert mae(PRED, TRUE) == 1.0
    assert mse(PRED, TRUE) == 1.5 and rmse(PRED, TRUE) == math.sqrt(1.5)
    assert math.isclose(mape(PRED, TRUE), (0.5 + 0 + 2 + 0.2) / 4)
    assert math.isclose(mspe(PRED, TRUE), (0.25 + 0 + 4 + 0.04) / 4)
    assert math.isclose(rse(PRED, TRUE), math.sqrt(6) / 3)  # Σ(true − 2.5)² = 9
    assert forecast_metrics(PRED, TRUE) == {"mae": 1.0, "mse": 1.5, "rmse": math.sqrt(1.5),
                                            "mape": mape(PRED, TRUE), "mspe": mspe(PRED, TRUE)}
    assert mape([1.0], [0.0]) == math.inf  # no guard, as TSLib
    with pytest.raises(DataError, match="differs"):
        mae(PRED, TRUE[:1])


def test_corr_is_tslibs_formula():
    true, pred = np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [3.0], [2.0]])
    # Σ dt·dp = 1, √Σ dt²·dp² = 1 → 1.0 (Pearson's correlation would be 0.5)
    assert corr(pred, true) == 1.0


def test_accuracy():
    assert accuracy([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], [1, 0, 0]) == pytest.approx(2 / 3)
    assert accuracy([2, 1], [2, 1]) == 1.0


def tslib_adjustment(gt, pred):
    """TSLib's ``adjustment`` loop as specified there (the test oracle for the vectorised version)."""
    pred, state = list(pred), False
    for i in range(len(gt)):
        if gt[i] == 1 and pred[i] == 1 and not state:
            state = True
            j = i
            while j >= 0 and gt[j] == 1:
                pred[j], j = 1, j - 1
            j = i
            while j < len(gt) and gt[j] == 1:
                pred[j], j = 1, j + 1
        elif gt[i] == 0:
            state = False
        if state:
            pred[i] = 1
    return np.array(pred)


def test_point_adjust_example_and_tslib_loop():
    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1, 1])
    assert point_adjust(pred, GT).tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 1, 1]
    assert pred.tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 1, 1]  # the input is not changed
    rng = np.random.default_rng(0)
    for _ in range(50):
        gt, guess = (rng.random(40) < 0.3).astype(int), (rng.random(40) < 0.2).astype(int)
        np.testing.assert_array_equal(point_adjust(guess, gt), tslib_adjustment(gt, guess))


def test_precision_recall_f1_by_hand_and_sklearn():
    from sklearn.metrics import precision_recall_fscore_support

    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1, 1])
    assert precision_recall_f1(pred, GT) == pytest.approx((2 / 3, 1 / 3, 4 / 9))
    adjusted = point_adjust(pred, GT)
    assert precision_recall_f1(adjusted, GT) == pytest.approx((4 / 5, 4 / 6, 8 / 11))
    assert precision_recall_f1(adjusted, GT) == pytest.approx(
        precision_recall_fscore_support(GT, adjusted, average="binary")[:3])
    assert precision_recall_f1(np.zeros(4), np.zeros(4)) == (0.0, 0.0, 0.0)  # no anomaly at all: 0, as sklearn


def test_anomaly_scores_threshold_and_both_f1():
    train = np.arange(10.0)
    test = np.array([0, 0, 25, 0, 0, 0, 0, 0, 20, 30.0])
    # 20 energies sorted: eight 0s, 1…9, 20, 25, 30; the 90th percentile sits at index 17.1: 20 + 0.1·5
    assert anomaly_threshold(train, test, 10) == pytest.approx(20.5)
    scores = anomaly_scores(train, test, GT, anomaly_ratio=10)  # pred = {2, 9}
    assert scores["threshold"] == pytest.approx(20.5)
    assert (scores["precision"], scores["recall"], scores["f1"], scores["accuracy"]) == pytest.approx(
        (1.0, 1 / 3, 0.5, 0.6))
    assert (scores["precision_pa"], scores["recall_pa"], scores["f1_pa"], scores["accuracy_pa"]) == pytest.approx(
        (1.0, 4 / 6, 0.8, 0.8))
    with pytest.raises(DataError, match="anomaly_ratio"):
        anomaly_threshold(train, test, 0)
    with pytest.raises(DataError, match="labels"):
        anomaly_scores(train, test, GT[:5], 10)
