"""Time-series tables and windows in the Time-Series-Library (TSLib) protocol (thuml/Time-Series-Library,
``data_provider/data_loader.py`` and ``data_factory.py``; DATA.md §3.2).

* :func:`read_table` reads a TSLib-format CSV (a ``date`` column, then numeric features), refusing a bad file with
  a one-line :class:`DataError`.
* :class:`ForecastDataset` is ``Dataset_ETT_hour`` / ``Dataset_ETT_minute`` / ``Dataset_Custom``: the same split
  borders, target column moved last, a standard scaler fitted on the training rows only, the same windows (without
  time marks); :func:`forecast_loaders` adds the loaders with TSLib's flags.
* :class:`AnomalyDataset` is ``PSMSegLoader``'s window convention, plus a non-overlapping test mode that keeps
  every point; :func:`load_anomaly` reads the labelled anomaly files that ship inside the ``aeon`` wheel
  (TimeEval CSV: ``timestamp, values…, is_anomaly``), found without importing aeon, or from a user folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ..train.errors import UserError

__all__ = ["DataError", "Standardizer", "read_table", "split_borders", "infer_layout", "ForecastDataset",
           "forecast_loaders", "AnomalyDataset", "load_timeeval_csv", "load_anomaly", "ANOMALY_SETS",
           "shipped_data_dir"]

FLAGS = ("train", "val", "test")
FEATURES = ("M", "S", "MS")
LAYOUTS = ("ETTh", "ETTm", "custom")


class DataError(UserError, ValueError):
    """A data file or table that cannot be used as asked (missing, malformed, too short); the message is one line
    naming the file and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------------------------

def _numeric(frame: pd.DataFrame, columns, where: str) -> np.ndarray:
    """``frame[columns]`` as float64, or a :class:`DataError` naming the first empty, non-numeric or infinite cell
    (its column, its data row counted from 1, and its line in the file, the header being line 1)."""
    raw = frame[list(columns)]
    numeric = raw.dtypes.map(pd.api.types.is_numeric_dtype).to_numpy(dtype=bool)
    block = raw if numeric.all() else raw.apply(lambda column: pd.to_numeric(column, errors="coerce"))
    out = block.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(out)
    if bad.any():
        j = int(np.flatnonzero(bad.any(axis=0))[0])
        row = int(np.flatnonzero(bad[:, j])[0])
        cell = raw.iloc[row, j]
        problem = ("empty cell" if pd.isna(cell) else "infinite value" if np.isinf(out[row, j])
                   else f"non-numeric value {cell!r}")
        raise DataError(f"{where}: {problem} in column {columns[j]!r} at row {row + 1} (line {row + 2})")
    return out


def _csv(path: str | Path) -> pd.DataFrame:
    """The CSV at ``path`` as read by pandas (only an empty cell reads as missing: ``NA`` or ``nan`` stay text, to
    be reported as non-numeric), or a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a readable CSV file ({' '.join(str(error).split())})") from None


def _check_table(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """``frame`` with ``date`` first and every other column float64, or a :class:`DataError`."""
    if "date" not in frame.columns:
        raise DataError(f"{where}: no 'date' column (TSLib layout: date, feature columns…; found "
                        f"{', '.join(map(str, frame.columns[:8]))})")
    features = [c for c in frame.columns if c != "date"]
    if not features:
        raise DataError(f"{where}: no feature columns besides 'date'")
    if frame.columns.duplicated().any():
        raise DataError(f"{where}: duplicated column {frame.columns[frame.columns.duplicated()][0]!r}")
    out = pd.DataFrame(_numeric(frame, features, where), columns=features, copy=False)
    out.insert(0, "date", frame["date"].to_numpy())
    return out


def read_table(path: str | Path) -> pd.DataFrame:
    """A TSLib-format CSV (``dataset/ETT-small/ETTh1.csv`` layout: a ``date`` column, then numeric features) as a
    DataFrame with ``date`` first (kept as text) and float64 features, or a one-line :class:`DataError` for a
    missing file, a missing ``date`` column, or an empty / non-numeric cell (naming its row and column)."""
    return _check_table(_csv(path), str(path))


class Standardizer:
    """sklearn's ``StandardScaler`` as TSLib uses it: per-column mean and population standard deviation
    (``ddof=0``); a constant column (sklearn's ``_is_constant_feature``: ``var ≤ n·ε·var + (n·mean·ε)²``) gets
    deviation 1."""

    def __init__(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.float64)
        eps, n = np.finfo(np.float64).eps, len(rows)
        self.mean = rows.mean(axis=0)
        var = rows.var(axis=0)
        self.std = np.where(var <= n * eps * var + (n * self.mean * eps) ** 2, 1.0, np.sqrt(var))

    def transform(self, data: np.ndarray) -> np.ndarray:
        return (np.asarray(data, dtype=np.float64) - self.mean) / self.std


def split_borders(rows: int, seq_len: int, layout: str) -> tuple[list[int], list[int]]:
    """TSLib's ``border1s`` / ``border2s``: the row range ``[border1, border2)`` of train, val and test.

    ETT-hour: 12·30·24 / 4·30·24 / 4·30·24 rows (rows past 20·30·24 are unused, as in TSLib); ETT-minute the same
    ×4; custom: ``num_train = int(rows·0.7)``, ``num_test = int(rows·0.2)``, val the rest. The val and test starts
    are pulled back by ``seq_len`` so their first window ends where the split begins."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if layout == "custom":
        num_train, num_test = int(rows * 0.7), int(rows * 0.2)
        num_val = rows - num_train - num_test
    else:
        month = 30 * 24 * (4 if layout == "ETTm" else 1)
        num_train, num_val, num_test = 12 * month, 4 * month, 4 * month
        if rows < num_train + num_val + num_test:
            raise DataError(f"the {layout} layout needs {num_train + num_val + num_test} rows "
                            f"({num_train}/{num_val}/{num_test}), the table has {rows}")
    starts = [0, num_train - seq_len, num_train + num_val - seq_len]
    ends = [num_train, num_train + num_val, num_train + num_val + num_test]
    return starts, ends


def infer_layout(name: str | Path) -> str:
    """The TSLib layout of a dataset file name: ``ETTh1/ETTh2`` → ``ETTh``, ``ETTm1/ETTm2`` → ``ETTm``, anything
    else (ECL, Traffic, Weather, Exchange, ILI, user files) → ``custom`` (TSLib's ``data_dict``)."""
    stem = Path(name).stem
    for layout in ("ETTh", "ETTm"):
        if stem.startswith(layout):
            return layout
    return "custom"


# ---------------------------------------------------------------------------------------------------------------
# forecasting
# ---------------------------------------------------------------------------------------------------------------

class ForecastDataset(Dataset):
    """TSLib's long-horizon forecasting dataset (``Dataset_ETT_hour`` / ``_minute`` / ``Dataset_Custom``).

    ``source`` is a CSV path or a DataFrame in the same layout. Columns: every feature (``M``, ``MS``) or only
    ``target`` (``S``), with ``target`` moved last, so ``MS`` models read channel ``-1`` (TSLib's ``f_dim = -1``).
    With ``scale``, every row is standardised with the statistics of the *training* rows (``border1s[0]:
    border2s[0]``) whatever ``flag`` is. Item ``i`` (``len = rows - seq_len - pred_len + 1`` of them, stride 1)::

        x = data[i : i + seq_len]                                   # [seq_len, C]
        y = data[i + seq_len - label_len : i + seq_len + pred_len]  # [label_len + pred_len, C]

    both float32 tensors; TSLib's time marks are not produced (the models here take none). ``name`` is how error
    messages call a DataFrame source.
    """

    def __init__(self, source: str | Path | pd.DataFrame, flag: str = "train", seq_len: int = 96,
                 label_len: int = 48, pred_len: int = 96, features: str = "M", target: str = "OT",
                 layout: str = "custom", scale: bool = True, *, name: str | None = None):
        if flag not in FLAGS:
            raise DataError(f"unknown split {flag!r}: choose one of {', '.join(FLAGS)}")
        if features not in FEATURES:
            raise DataError(f"unknown features mode {features!r}: choose one of {', '.join(FEATURES)}")
        if not (seq_len >= 1 and pred_len >= 1 and 0 <= label_len <= seq_len):
            raise DataError(f"window sizes need seq_len >= 1, pred_len >= 1 and 0 <= label_len <= seq_len; got "
                            f"seq_len={seq_len}, label_len={label_len}, pred_len={pred_len}")
        where = name or ("the DataFrame" if isinstance(source, pd.DataFrame) else str(source))
        table = _check_table(source, where) if isinstance(source, pd.DataFrame) else read_table(source)
        if target not in table.columns or target == "date":
            raise DataError(f"{where}: no target column {target!r} (columns: "
                            f"{', '.join(map(str, table.columns[1:9]))})")
        others = [c for c in table.columns[1:] if c != target]
        self.columns = [target] if features == "S" else others + [target]
        self.flag, self.features, self.target, self.layout = flag, features, target, layout
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.borders = split_borders(len(table), seq_len, layout)
        starts, ends = self.borders
        if starts[1] < 0:
            raise DataError(f"{where}: {len(table)} rows leave {ends[0]} training rows, fewer than "
                            f"seq_len={seq_len}")
        start, end = starts[FLAGS.index(flag)], ends[FLAGS.index(flag)]
        windows = end - start - seq_len - pred_len + 1
        if windows < 1:
            raise DataError(f"{where}: the {flag} split has {end - start} rows (with the seq_len pull-back), too "
                            f"few for one window of seq_len + pred_len = {seq_len + pred_len}")
        values = table[self.columns].to_numpy(dtype=np.float64)
        if scale:
            scaler = Standardizer(values[starts[0]:ends[0]])
            self.scaler_mean, self.scaler_std = scaler.mean, scaler.std
            values = scaler.transform(values)
        else:
            self.scaler_mean, self.scaler_std = np.zeros(len(self.columns)), np.ones(len(self.columns))
        self.scale = scale
        self.data = torch.from_numpy(values[start:end].astype(np.float32))

    @property
    def num_variates(self) -> int:
        return len(self.columns)

    def __len__(self) -> int:
        return len(self.data) - self.seq_len - self.pred_len + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        end = index + self.seq_len
        return self.data[index:end], self.data[end - self.label_len:end + self.pred_len]

    def inverse_transform(self, data):
        """Undo the scaling of ``data`` (numpy array or tensor ``[..., C]``; ``[..., 1]`` is read as the target
        column, for ``MS`` outputs)."""
        width = data.shape[-1]
        if width == self.num_variates:
            mean, std = self.scaler_mean, self.scaler_std
        elif width == 1:
            mean, std = self.scaler_mean[-1:], self.scaler_std[-1:]
        else:
            raise DataError(f"inverse_transform needs {self.num_variates} or 1 channels in the last dimension, "
                            f"got {width}")
        if torch.is_tensor(data):
            mean = torch.as_tensor(mean, dtype=data.dtype, device=data.device)
            std = torch.as_tensor(std, dtype=data.dtype, device=data.device)
        return data * std + mean


def forecast_loaders(source: str | Path | pd.DataFrame, *, seq_len: int = 96, label_len: int = 48,
                     pred_len: int = 96, features: str = "M", target: str = "OT", layout: str = "custom",
                     scale: bool = True, batch_size: int = 32, num_workers: int = 0,
                     seed: int = 0) -> dict[str, tuple[ForecastDataset, DataLoader]]:
    """``{"train" | "val" | "test": (dataset, loader)}`` with the flags of TSLib's ``data_factory.data_provider``
    (as of 2024-07, commit bdec492 onwards): ``shuffle`` for train and val, not test; ``drop_last=False`` for all
    three (older TSLib and many papers used ``drop_last=True``, which drops the last test windows). Shuffling
    draws from a generator seeded with ``seed``. The file is read once."""
    table = read_table(source) if not isinstance(source, pd.DataFrame) else source
    out = {}
    for flag in FLAGS:
        dataset = ForecastDataset(table, flag, seq_len, label_len, pred_len, features, target, layout, scale,
                                  name=None if isinstance(source, pd.DataFrame) else str(source))
        shuffle = flag != "test"
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                            num_workers=num_workers,
                            generator=torch.Generator().manual_seed(seed) if shuffle else None)
        out[flag] = (dataset, loader)
    return out


# ---------------------------------------------------------------------------------------------------------------
# anomaly detection
# ---------------------------------------------------------------------------------------------------------------

ANOMALY_FLAGS = ("train", "val", "test", "thre")


class AnomalyDataset(Dataset):
    """Reconstruction windows in TSLib's ``PSMSegLoader`` convention.

    ``train`` ``[T, C]`` and ``test`` ``[T', C]`` (1-D arrays are one channel) have NaN replaced by 0 and are
    standardised with the statistics of ``train`` (:class:`Standardizer`); ``val`` is the last 20 % of the
    training rows (``train[int(0.8·T):]``, as TSLib: it overlaps the training rows). Item: ``(x [win_size, C]
    float32, labels [win_size] int64)``; labels are the test labels for ``test`` / ``thre`` and zeros for
    ``train`` / ``val`` (TSLib returns the first test labels there as a placeholder).

    * ``train`` / ``val`` / ``test``: windows starting every ``step`` rows, ``(T - win_size) // step + 1`` of them
      (TSLib's ``exp_anomaly_detection`` scores ``test`` windows, overlapping for ``step < win_size``).
    * ``thre``: non-overlapping windows of ``win_size``, ``ceil(T' / win_size)`` of them, the last one aligned with
      the end of the series so no point is dropped (TSLib's ``thre`` mode drops the tail);
      :meth:`stitch` turns per-window values back into one value per test point.
    """

    def __init__(self, train, test, test_labels, flag: str = "train", win_size: int = 100, step: int = 1):
        if flag not in ANOMALY_FLAGS:
            raise DataError(f"unknown split {flag!r}: choose one of {', '.join(ANOMALY_FLAGS)}")
        train, test = (np.nan_to_num(np.asarray(a, dtype=np.float64)) for a in (train, test))
        train, test = (a[:, None] if a.ndim == 1 else a for a in (train, test))
        labels = np.asarray(test_labels)
        if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
            raise DataError(f"train and test must be [time, channels] with the same channels; got shapes "
                            f"{train.shape} and {test.shape}")
        if labels.shape != (len(test),) or not np.isin(labels, (0, 1)).all():
            raise DataError(f"test_labels must be {len(test)} values in {{0, 1}}, got shape {labels.shape}")
        if win_size < 1 or step < 1:
            raise DataError(f"win_size and step must be >= 1, got {win_size} and {step}")
        scaler = Standardizer(train)
        self.scaler_mean, self.scaler_std = scaler.mean, scaler.std
        self.flag, self.win_size, self.step = flag, win_size, step
        series = {"train": train, "val": train[int(len(train) * 0.8):], "test": test, "thre": test}[flag]
        if len(series) < win_size:
            raise DataError(f"the {flag} split has {len(series)} rows, fewer than win_size={win_size}")
        self.series = torch.from_numpy(scaler.transform(series).astype(np.float32))
        point_labels = labels if flag in ("test", "thre") else np.zeros(len(series))
        self.labels = torch.from_numpy(point_labels.astype(np.int64))
        if flag == "thre":
            count = -(-len(series) // win_size)
            self.starts = [min(i * win_size, len(series) - win_size) for i in range(count)]
        else:
            self.starts = list(range(0, len(series) - win_size + 1, step))

    @property
    def num_variates(self) -> int:
        return self.series.shape[1]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[index]
        return self.series[start:start + self.win_size], self.labels[start:start + self.win_size]

    def stitch(self, values):
        """Per-window values ``[windows, win_size, ...]`` of a ``thre`` dataset → one per point ``[T', ...]``
        (numpy array or tensor): every window whole, then the part of the end-aligned last window that the
        others did not cover."""
        if self.flag != "thre":
            raise DataError(f"stitch needs the non-overlapping 'thre' windows, this dataset is {self.flag!r}")
        if tuple(values.shape[:2]) != (len(self), self.win_size):
            raise DataError(f"stitch needs [{len(self)}, {self.win_size}, ...] values, got {tuple(values.shape)}")
        tail = len(self.series) - (len(self) - 1) * self.win_size
        head = values[:-1].reshape(-1, *values.shape[2:])
        last = values[-1][self.win_size - tail:]
        return torch.cat([head, last]) if torch.is_tensor(values) else np.concatenate([head, last])


def shipped_data_dir(package: str) -> Path | None:
    """``<package>/datasets/data`` inside an installed ``aeon`` or ``sktime`` (their wheels ship small data sets
    there), found with ``importlib.util.find_spec`` so the package itself is never imported (both pin older pandas
    and pull in heavy dependencies); ``None`` if the package or the folder is absent."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(location) / "datasets" / "data"
        if folder.is_dir():
            return folder
    return None


def load_timeeval_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A TimeEval-format CSV (aeon's anomaly files): ``timestamp, value columns…, is_anomaly`` → ``(values [T, C]
    float64, labels [T] int64)``, or a one-line :class:`DataError`."""
    frame = _csv(path)
    columns = list(frame.columns)
    if len(columns) < 3 or columns[-1] != "is_anomaly":
        raise DataError(f"{path}: not a TimeEval anomaly file (expected columns timestamp, values…, is_anomaly; "
                        f"found {', '.join(columns[:8])})")
    values = _numeric(frame, columns[1:-1], str(path))
    labels = _numeric(frame, columns[-1:], str(path))[:, 0]
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path}: is_anomaly must be 0 or 1")
    return values, labels.astype(np.int64)


#: anomaly sets in aeon 1.6's wheel (``aeon/datasets/data/``): name → (folder, training file or ``None`` for a
#: single series to split, test file). ecg-diff-count-3 is GutenTAG synthetic ECG (TimeEval); its training file
#: is the anomaly-free ``TRAIN_NA`` (TimeEval's semi-supervised setting). KDD-TSAD 135 is UCR anomaly archive's
#: InternalBleeding16 (one labelled anomaly). Daphnet S06R02E0 is one unlabelled-in-practice recording: its
#: ``is_anomaly`` column is all 0 (aeon 1.6 deprecates it for that reason), so F1 on it is undefined.
ANOMALY_SETS: dict[str, tuple[str, str | None, str]] = {
    "ecg-diff-count-3": ("UnitTest", "ecg-diff-count-3_TRAIN_NA.csv", "ecg-diff-count-3_TEST.csv"),
    "KDD-TSAD_135": ("KDD-TSAD_135", "135_UCR_Anomaly_InternalBleeding16_TRAIN.csv",
                     "135_UCR_Anomaly_InternalBleeding16_TEST.csv"),
    "Daphnet_S06R02E0": ("Daphnet_S06R02E0", None, "S06R02E0.csv"),
}


def load_anomaly(name: str, root: str | Path | None = None,
                 train_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train [T, C], test [T', C], test_labels [T'])`` of an :data:`ANOMALY_SETS` set, read from ``root`` (a
    folder laid out like ``aeon/datasets/data``, or holding the files directly) or else from an installed aeon; or
    of a TimeEval CSV file ``name`` (``*.csv``: one labelled series, e.g. a Daphnet recording with its labels). A
    set shipped as one series is split in time: the first ``int(train_fraction·T)`` rows train (their labels
    dropped), the rest test."""
    if not 0 < train_fraction < 1:
        raise DataError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if name.lower().endswith(".csv"):
        if not Path(name).is_file():
            raise DataError(f"{name}: no such file")
        return split_in_time(*load_timeeval_csv(Path(name)), train_fraction)
    if name not in ANOMALY_SETS:
        raise DataError(f"unknown anomaly set {name!r}: choose one of {', '.join(ANOMALY_SETS)}")
    folder, train_file, test_file = ANOMALY_SETS[name]
    bases = [Path(root), Path(root) / folder] if root is not None else []
    aeon = shipped_data_dir("aeon")
    bases += [aeon / folder] if aeon is not None and root is None else []
    base = next((b for b in bases if (b / test_file).is_file()), None)
    if base is None:
        where = f"under {root}" if root is not None else "(aeon is not installed)" if aeon is None else "in aeon"
        raise DataError(f"anomaly set {name!r} not found {where}: `pip install aeon` (its wheel ships {test_file}) "
                        f"or pass the folder that holds it")
    test, labels = load_timeeval_csv(base / test_file)
    if train_file is not None:
        train, _ = load_timeeval_csv(base / train_file)
        return train, test, labels
    return split_in_time(test, labels, train_fraction)


def split_in_time(values: np.ndarray, labels: np.ndarray,
                  train_fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One labelled series as ``(train, test, test_labels)``: the first ``int(train_fraction·T)`` rows train (their
    labels dropped), the rest test."""
    cut = int(len(values) * train_fraction)
    return values[:cut], values[cut:], labels[cut:]
