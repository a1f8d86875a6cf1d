"""Time-series data in the TSLib protocol: split borders, train-only scaling and windows on a small CSV against hand
counts; the ``.ts`` parser and the UEA dataset; anomaly windows; the aeon/sktime file lookup; the synthetic
generators; and one-line errors for bad files."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from nestedmemory.timeseries.data import (AnomalyDataset, DataError, ForecastDataset, forecast_loaders, infer_layout,
                                          load_anomaly, load_timeeval_csv, read_table, shipped_data_dir,
                                          split_borders)
from nestedmemory.timeseries.synthetic import (ETT_COLUMNS, lead_lag_classification, synthetic_anomaly,
                                               synthetic_ett)
from nestedmemory.timeseries.uea import UEADataset, find_uea, read_ts
from nestedmemory.train.errors import UserError

DATA = Path(__file__).parent / "data" / "timeseries"
CSV = DATA / "tiny.csv"  # 20 rows: date, OT = 100 + i % 3, a = i, b = i²
TRAIN_TS, TEST_TS = DATA / "tiny_TRAIN.ts", DATA / "tiny_TEST.ts"


def one_line_error(call, *fragments, error=DataError):
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and isinstance(caught.value, UserError)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------------------------------------------------------
# forecasting: borders, scaler, windows
# ---------------------------------------------------------------------------------------------------------------

def test_custom_borders_and_window_counts_by_hand():
    # 20 rows: num_train = int(14.0) = 14, num_test = int(4.0) = 4, num_val = 2; seq_len 4 pulls val/test back.
    assert split_borders(20, 4, "custom") == ([0, 10, 12], [14, 16, 20])
    counts = {flag: len(ForecastDataset(CSV, flag, seq_len=4, label_len=2, pred_len=2)) for flag in
              ("train", "val", "test")}
    assert counts == {"train": 14 - 4 - 2 + 1, "val": 6 - 4 - 2 + 1, "test": 8 - 4 - 2 + 1}
    # TSLib's int() truncation: 0.7 · 17 = 11.9 → 11, 0.2 · 17 = 3.4 → 3, val 3.
    assert split_borders(17, 2, "custom") == ([0, 9, 12], [11, 14, 17])


def test_ett_borders():
    assert split_borders(17420, 96, "ETTh") == ([0, 8640 - 96, 11520 - 96], [8640, 11520, 14400])
    assert split_borders(69680, 96, "ETTm") == ([0, 34560 - 96, 46080 - 96], [34560, 46080, 57600])
    one_line_error(lambda: split_borders(14399, 96, "ETTh"), "14400 rows", "14399")
    assert [infer_layout(n) for n in ("ETTh1.csv", "x/ETTm2.csv", "weather.csv")] == ["ETTh", "ETTm", "custom"]
    frame = pd.DataFrame({"date": np.arange(14400).astype(str), "u": np.arange(14400.0), "OT": np.ones(14400)})
    test = ForecastDataset(frame, "test", seq_len=24, label_len=0, pred_len=24, layout="ETTh", scale=False)
    assert len(test) == 2880 + 24 - 24 - 24 + 1
    assert test[0][0][0, 0].item() == 11520 - 24  # the test split starts seq_len rows before its border


def test_windows_align_with_label_overlap():
    train = ForecastDataset(CSV, "train", seq_len=4, label_len=2, pred_len=3, scale=False)
    assert train.columns == ["a", "b", "OT"]  # target moved last
    val = ForecastDataset(CSV, "val", seq_len=4, label_len=2, pred_len=2, scale=False)
    x, y = val[0]
    assert len(val) == 1 and x.dtype == y.dtype == torch.float32 and x.shape == (4, 3) and y.shape == (2 + 2, 3)
    assert x[:, 0].tolist() == [10, 11, 12, 13]  # val border1 = 14 - seq_len
    assert y[:, 0].tolist() == [12, 13, 14, 15]  # label_len rows of overlap, then pred_len
    assert y[:, 1].tolist() == [144, 169, 196, 225]
    for i in range(len(train)):
        x, y = train[i]
        assert x[:, 0].tolist() == list(range(i, i + 4)) and y[:, 0].tolist() == list(range(i + 2, i + 7))
    with pytest.raises(IndexError):
        train[len(train)]


def test_scaler_fitted_on_train_rows_only():
    from sklearn.preprocessing import StandardScaler

    table = read_table(CSV)
    moved = table.copy()
    moved.loc[14:, ["OT", "a", "b"]] *= 1000.0  # change only val/test rows
    a = ForecastDataset(table, "test", seq_len=4, label_len=2, pred_len=2)
    b = ForecastDataset(moved, "test", seq_len=4, label_len=2, pred_len=2)
    reference = StandardScaler().fit(table[["a", "b", "OT"]].to_numpy()[:14])
    np.testing.assert_allclose(a.scaler_mean, reference.mean_)
    np.testing.assert_allclose(a.scaler_std, reference.scale_)
    np.testing.assert_allclose(b.scaler_mean, reference.mean_)
    assert a.scaler_mean[0] == 6.5 and np.isclose(a.scaler_std[0], np.sqrt((14 ** 2 - 1) / 12))  # a = 0..13
    expected = reference.transform(table[["a", "b", "OT"]].to_numpy())[12:16]
    np.testing.assert_allclose(a[0][0].numpy(), expected, rtol=1e-6)
    x = a[0][0].double().numpy()
    np.testing.assert_allclose(a.inverse_transform(x), table[["a", "b", "OT"]].to_numpy()[12:16], rtol=1e-6)
    target = a.inverse_transform(torch.from_numpy(x[:, -1:]))
    np.testing.assert_allclose(target[:, 0].numpy(), table["OT"].to_numpy()[12:16], rtol=1e-6)


def test_features_s_and_ms():
    s = ForecastDataset(CSV, "train", seq_len=4, label_len=2, pred_len=2, features="S", scale=False)
    ms = ForecastDataset(CSV, "train", seq_len=4, label_len=2, pred_len=2, features="MS", scale=False)
    assert s.columns == ["OT"] and s[0][0].shape == (4, 1) and s[0][1][:, 0].tolist() == [102, 100, 101, 102]
    assert ms.columns == ["a", "b", "OT"] and ms[0][1][:, -1].tolist() == [102, 100, 101, 102]
    assert s.scaler_mean.shape == (1,)
    other = ForecastDataset(CSV, "train", seq_len=4, label_len=2, pred_len=2, features="MS", target="a",
                            scale=False)
    assert other.columns == ["OT", "b", "a"]


def test_loaders_follow_tslib_flags():
    splits = forecast_loaders(CSV, seq_len=4, label_len=2, pred_len=2, batch_size=4)
    for flag, (dataset, loader) in splits.items():
        assert loader.drop_last is False and dataset.flag == flag
        assert isinstance(loader.sampler, SequentialSampler if flag == "test" else RandomSampler)
    _, test_loader = splits["test"]
    assert sum(len(x) for x, _ in test_loader) == 3  # every test window, the last batch kept
    again = forecast_loaders(CSV, seq_len=4, label_len=2, pred_len=2, batch_size=4)
    first = [x for x, _ in splits["train"][1]]
    assert all(torch.equal(u, v) for u, v in zip(first, [x for x, _ in again["train"][1]]))


# ---------------------------------------------------------------------------------------------------------------
# bad tables
# ---------------------------------------------------------------------------------------------------------------

def write(tmp_path, text, name="bad.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bad_csv_files_give_one_line_errors(tmp_path):
    one_line_error(lambda: read_table(tmp_path / "absent.csv"), "not found")
    one_line_error(lambda: read_table(write(tmp_path, "time,OT\n1,2\n")), "no 'date' column")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1,2\nd1,x7,3\n")),
                   "non-numeric value 'x7'", "column 'a'", "row 2", "line 3")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1,2\nd1,NA,3\n")), "'NA'")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1,2\nd1,3,inf\n")), "infinite", "'OT'")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1,2\nd1,,3\n")),
                   "empty cell", "column 'a'", "row 2")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1\nd1,2,3\n")), "empty cell", "column 'OT'")
    one_line_error(lambda: read_table(write(tmp_path, "date,a,OT\nd0,1,2\nd1,2,3,4,5\n")), "not a readable CSV")
    one_line_error(lambda: read_table(write(tmp_path, "")), "not a readable CSV")
    one_line_error(lambda: read_table(write(tmp_path, "date\nd0\n")), "no feature columns")
    one_line_error(lambda: ForecastDataset(CSV, "train", 4, 2, 2, target="load"), "no target column 'load'")
    one_line_error(lambda: ForecastDataset(CSV, "test", 8, 2, 5), "test split has 12 rows")
    one_line_error(lambda: ForecastDataset(CSV, "train", 15, 2, 2), "fewer than seq_len=15")
    one_line_error(lambda: ForecastDataset(CSV, "train", 4, 5, 2), "label_len <= seq_len")
    one_line_error(lambda: ForecastDataset(CSV, "fit", 4, 2, 2), "unknown split 'fit'")
    one_line_error(lambda: ForecastDataset(CSV, "train", 4, 2, 2, features="X"), "features mode 'X'")
    one_line_error(lambda: forecast_loaders(CSV, seq_len=8, label_len=2, pred_len=4), str(CSV), "val split")


# ---------------------------------------------------------------------------------------------------------------
# .ts files and the UEA dataset
# ---------------------------------------------------------------------------------------------------------------

def test_read_ts_fixture():
    series, labels, header = read_ts(TRAIN_TS)
    assert labels == ["up", "down", "up", "down"]
    assert [s.shape for s in series] == [(2, 3), (2, 4), (2, 2), (2, 5)]
    assert series[0].tolist() == [[1, 2, 3], [10, 20, 30]]
    assert np.isnan(series[1][0, 1]) and series[1][0, 2] == 6
    assert header["problemname"] == "Tiny" and header["classlabel"] == "true up down"


@pytest.mark.parametrize("body, fragments", [
    ("@problemName X\n@classLabel true a b\n1,2:3,4:a\n", ("expected an @key header line", ":3")),
    ("@problemName X\n@classLabel true a b\n", ("no @data line",)),
    ("@classLabel true a b\n@data\n", ("no cases",)),
    ("@classLabel true a b\n@data\n1,2,3:4,5:a\n", ("different lengths (3, 2)", ":3")),
    ("@dimensions 2\n@classLabel true a b\n@data\n1,2:3,4:a\n1,2:a\n", ("1 dimensions, expected 2", ":5")),
    ("@classLabel true a b\n@data\n1,x,3:4,5,6:a\n", ("dimension 1 holds 'x'",)),
    ("@classLabel true a b\n@data\n1,2:3,4:c\n", ("class label 'c'",)),
    ("@classLabel true\n@data\n1,2:3,4:a\n", ("must list the class values",)),
    ("@timeStamps true\n@data\n", ("time-stamped",)),
])
def test_bad_ts_files(tmp_path, body, fragments):
    path = write(tmp_path, body, "bad.ts")
    one_line_error(lambda: read_ts(path), str(path), *fragments)


def test_uea_dataset_padding_labels_and_train_statistics():
    train = UEADataset(TRAIN_TS, TEST_TS, "train")
    test = UEADataset(TRAIN_TS, TEST_TS, "test")
    assert train.classes == ["up", "down"] and train.num_classes == 2 and train.num_variates == 2
    assert train.max_len == test.max_len == 6  # longest of train ∪ test
    x, label, mask = test[0]
    assert x.shape == (6, 2) and x.dtype == mask.dtype == torch.float32 and label.dtype == torch.int64
    assert label.item() == 1 and test[1][1].item() == 0  # "down" is the header's second class
    assert mask.tolist() == [1] * 6 and test[1][2].tolist() == [1, 1, 0, 0, 0, 0]
    assert torch.all(train[2][0][2:] == 0)
    # channel 0 of the training cases, the '?' interpolated to 5: mean and sample std over the 14 real steps
    steps = np.array([1, 2, 3, 4, 5, 6, 7, 1, 1, 0, 1, 2, 3, 4], dtype=float)
    assert np.isclose(train.mean[0], steps.mean()) and np.isclose(train.std[0], steps.std(ddof=1))
    assert np.allclose(test.mean, train.mean)  # the test split is scaled with training statistics
    np.testing.assert_allclose(test[0][0][:, 0].numpy(), (np.arange(1, 7) - steps.mean()) / steps.std(ddof=1),
                               rtol=1e-6)
    assert np.isclose(train[1][0][1, 0].item(), (5 - steps.mean()) / steps.std(ddof=1), rtol=1e-6)


def test_uea_validation_split_is_carved_from_train():
    train = UEADataset(TRAIN_TS, TEST_TS, "train", val_fraction=0.5, seed=3)
    val = UEADataset(TRAIN_TS, TEST_TS, "val", val_fraction=0.5, seed=3)
    assert len(train) == len(val) == 2 and sorted(val.y.tolist()) == [0, 1]  # one case of each class
    assert set(train.indices) | set(val.indices) == {0, 1, 2, 3} and not set(train.indices) & set(val.indices)
    assert np.allclose(val.mean, train.mean)  # statistics from the cases trained on
    assert not np.allclose(train.mean, UEADataset(TRAIN_TS, TEST_TS, "train").mean)
    one_line_error(lambda: UEADataset(TRAIN_TS, TEST_TS, "val"), "val_fraction")
    one_line_error(lambda: UEADataset(TRAIN_TS, TEST_TS, "train", val_fraction=0.1), "holds out no")


def test_find_uea_uses_a_root_or_shipped_wheels_without_importing(tmp_path, monkeypatch):
    assert find_uea("tiny", DATA) == (DATA / "tiny_TRAIN.ts", DATA / "tiny_TEST.ts")
    one_line_error(lambda: find_uea("Nope", DATA), "pip install aeon")
    package = tmp_path / "site" / "aeon"
    folder = package / "datasets" / "data" / "JapaneseVowels"
    folder.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('aeon must not be imported')\n")
    for split in ("TRAIN", "TEST"):
        (folder / f"JapaneseVowels_{split}.ts").write_text((DATA / f"tiny_{split}.ts").read_text())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "aeon", raising=False)
    assert shipped_data_dir("aeon") == package / "datasets" / "data"
    assert find_uea("JapaneseVowels") == (folder / "JapaneseVowels_TRAIN.ts", folder / "JapaneseVowels_TEST.ts")
    assert "aeon" not in sys.modules


@pytest.mark.skipif(shipped_data_dir("aeon") is None and shipped_data_dir("sktime") is None,
                    reason="neither aeon nor sktime is installed")
def test_real_uea_sets_from_wheels():
    for name, shape, classes in (("BasicMotions", (100, 6), 4), ("JapaneseVowels", (29, 12), 9)):
        data = UEADataset(*find_uea(name), "test")
        assert data[0][0].shape == shape and data.num_classes == classes


# ---------------------------------------------------------------------------------------------------------------
# anomaly windows and files
# ---------------------------------------------------------------------------------------------------------------

def test_anomaly_windows_and_stitch():
    train = np.arange(20.0)[:, None].repeat(2, 1)
    test = np.arange(100.0, 123.0)[:, None].repeat(2, 1)
    labels = (np.arange(23) % 7 == 0).astype(int)
    kwargs = dict(win_size=5)
    fit = AnomalyDataset(train, test, labels, "train", **kwargs)
    assert len(fit) == 16 and np.allclose(fit[3][0][:, 0], (np.arange(3, 8) - 9.5) / train[:, 0].std())
    assert fit[0][1].tolist() == [0] * 5
    assert len(AnomalyDataset(train, test, labels, "val", win_size=3)) == 4 - 3 + 1  # train[16:]: 4 rows
    step = AnomalyDataset(train, test, labels, "test", win_size=5, step=2)
    assert len(step) == (23 - 5) // 2 + 1 and step[1][1].tolist() == labels[2:7].tolist()
    thre = AnomalyDataset(train, test, labels, "thre", **kwargs)
    assert thre.starts == [0, 5, 10, 15, 18]  # the last window ends with the series: no point dropped
    windows = torch.stack([thre[i][0] for i in range(len(thre))])
    np.testing.assert_allclose(thre.stitch(windows).numpy(), thre.series.numpy())
    assert thre.stitch(torch.stack([thre[i][1] for i in range(len(thre))])).tolist() == labels.tolist()
    one_line_error(lambda: fit.stitch(windows), "'thre'")


def test_anomaly_validation_rows_and_errors():
    train, test, labels = np.random.default_rng(0).normal(size=(50, 3)), np.zeros((30, 3)), np.zeros(30)
    val = AnomalyDataset(train, test, labels, "val", win_size=10)
    assert len(val) == 1 and np.allclose(val.series.numpy(), (train[40:] - train.mean(0)) / train.std(0), atol=1e-6)
    one_line_error(lambda: AnomalyDataset(train, test, labels, "val", win_size=11), "val split has 10 rows")
    one_line_error(lambda: AnomalyDataset(train, test[:, :2], labels, "test", win_size=5), "same channels")
    one_line_error(lambda: AnomalyDataset(train, test, labels[:5], "test", win_size=5), "test_labels")
    one_line_error(lambda: AnomalyDataset(train, test, labels + 2, "test", win_size=5), "{0, 1}")


def test_timeeval_files_from_a_user_folder(tmp_path):
    def timeeval(path, values, labels):
        frame = pd.DataFrame(values, columns=[f"v{i}" for i in range(values.shape[1])])
        frame.insert(0, "timestamp", np.arange(len(values)))
        frame["is_anomaly"] = labels
        frame.to_csv(path, index=False)

    unit = tmp_path / "UnitTest"
    unit.mkdir()
    timeeval(unit / "ecg-diff-count-3_TRAIN_NA.csv", np.ones((8, 1)), np.zeros(8, dtype=int))
    timeeval(unit / "ecg-diff-count-3_TEST.csv", np.arange(10.0)[:, None], (np.arange(10) > 7).astype(int))
    train, test, labels = load_anomaly("ecg-diff-count-3", tmp_path)
    assert train.shape == (8, 1) and test.shape == (10, 1) and labels.tolist() == [0] * 8 + [1, 1]
    timeeval(tmp_path / "S06R02E0.csv", np.arange(20.0)[:, None].repeat(9, 1), np.arange(20) % 2)
    train, test, labels = load_anomaly("Daphnet_S06R02E0", tmp_path, train_fraction=0.25)
    assert train.shape == (5, 9) and test[0, 0] == 5 and labels.tolist() == (np.arange(5, 20) % 2).tolist()
    train, test, labels = load_anomaly(str(tmp_path / "S06R02E0.csv"), train_fraction=0.25)  # a labelled file
    assert train.shape == (5, 9) and test[0, 0] == 5 and labels.tolist() == (np.arange(5, 20) % 2).tolist()
    one_line_error(lambda: load_anomaly(str(tmp_path / "missing.csv")), "missing.csv: no such file")
    one_line_error(lambda: load_anomaly("KDD-TSAD_135", tmp_path), "not found", "pip install aeon")
    one_line_error(lambda: load_anomaly("PSM"), "unknown anomaly set")
    one_line_error(lambda: load_timeeval_csv(write(tmp_path, "timestamp,v,label\n0,1,0\n")), "TimeEval")
    one_line_error(lambda: load_timeeval_csv(write(tmp_path, "timestamp,v,is_anomaly\n0,1,2\n")), "0 or 1")


@pytest.mark.skipif(shipped_data_dir("aeon") is None, reason="aeon is not installed")
def test_real_anomaly_sets_from_aeon():
    train, test, labels = load_anomaly("ecg-diff-count-3")
    assert train.shape == test.shape == (10000, 1) and labels.sum() == 300
    assert load_anomaly("Daphnet_S06R02E0")[1].shape == (3520, 9)


# ---------------------------------------------------------------------------------------------------------------
# synthetic generators
# ---------------------------------------------------------------------------------------------------------------

def lagged(values, columns, p, h):
    """Least-squares design: the last ``p`` steps of ``columns`` → OT ``h`` steps ahead."""
    rows = np.arange(p - 1, len(values) - h)
    design = np.concatenate([values[rows - k][:, columns] for k in range(p)] + [np.ones((len(rows), 1))], axis=1)
    return design, values[rows + h, -1]


def test_synthetic_ett_layout_and_cross_variate_lag():
    frame = synthetic_ett(rows=3000, seed=1)
    assert tuple(frame.columns) == ETT_COLUMNS and len(frame) == 3000
    assert frame["date"].iloc[0] == "2016-07-01 00:00:00" and frame["date"].iloc[1] == "2016-07-01 01:00:00"
    pd.testing.assert_frame_equal(frame, synthetic_ett(rows=3000, seed=1))
    assert not frame.equals(synthetic_ett(rows=3000, seed=2))
    assert synthetic_ett(rows=10, freq="15min")["date"].iloc[1] == "2016-07-01 00:15:00"
    values = frame.iloc[:, 1:].to_numpy()
    values = (values - values.mean(0)) / values.std(0)
    errors = []
    for columns in ([6], list(range(7))):  # OT's own history vs every variate's, 48 steps back, 24 ahead
        design, target = lagged(values, columns, 48, 24)
        cut = int(0.7 * len(design))
        gram = design[:cut].T @ design[:cut] + 1e-6 * np.eye(design.shape[1])  # least squares (normal equations)
        weights = np.linalg.solve(gram, design[:cut].T @ target[:cut])
        errors.append(np.mean((design[cut:] @ weights - target[cut:]) ** 2))
    assert errors[1] < 0.3 * errors[0], errors
    ForecastDataset(frame, "train", 96, 48, 96)  # readable as a TSLib table


def test_lead_lag_classes_differ_only_across_channels():
    x, y = lead_lag_classification(samples=400, length=64, variates=3, lag=4, seed=0)
    assert x.shape == (400, 64, 3) and x.dtype == np.float32 and y.dtype == np.int64 and y.sum() == 200
    np.testing.assert_array_equal(x, lead_lag_classification(400, 64, 3, 4, 0)[0])
    lags = np.mean(x[:, 4:, 1] * x[:, :-4, 0], 1)  # x₁(t)·x₀(t − 4)
    leads = np.mean(x[:, :-4, 1] * x[:, 4:, 0], 1)  # x₁(t)·x₀(t + 4)
    assert np.mean((leads > lags) == (y == 1)) > 0.95
    for channel in range(3):  # per channel, the two classes look alike
        for stat in (x[..., channel].var(1), np.mean(x[:, 1:, channel] * x[:, :-1, channel], 1)):
            assert abs(stat[y == 0].mean() - stat[y == 1].mean()) < 0.15


def test_synthetic_anomaly_labels_mark_the_injected_changes():
    train, test, labels = synthetic_anomaly(rows=1000, variates=4, seed=0)
    assert train.shape == test.shape == (1000, 4) and set(np.unique(labels)) == {0, 1}
    assert np.count_nonzero(np.diff(labels) == 1) == 4 and 0.01 < labels.mean() < 0.2
    again = synthetic_anomaly(rows=1000, variates=4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((train, test, labels), again))
    # residual of a least-squares fit on the known seasonal basis, fitted on train: larger on labelled points
    t = np.arange(2000.0)
    basis = np.stack([f(2 * np.pi * t / p) for p in (50, 120) for f in (np.sin, np.cos)] + [np.ones(2000)], 1)
    coef = np.linalg.lstsq(basis[:1000], train, rcond=None)[0]
    energy = np.mean((test - basis[1000:] @ coef) ** 2, 1)
    assert energy[labels == 1].mean() > 5 * energy[labels == 0].mean()
    dataset = AnomalyDataset(train, test, labels, "thre", win_size=100)
    assert len(dataset) == 10 and dataset.num_variates == 4
