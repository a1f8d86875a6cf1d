"""UEA/UCR classification archives in the ``.ts`` format (timeseriesclassification.com; the format sktime's
``load_from_tsfile_to_dataframe`` reads) and the classification dataset of TSLib's ``UEAloader``
(thuml/Time-Series-Library ``data_provider/data_loader.py``, ``data_provider/uea.py``), with its two known flaws
fixed: normalisation statistics come from the training split only (TSLib issue #816: its ``Normalizer`` is fitted
on whichever split it loads, test included), and validation can be carved from the training split instead of
reusing the test set (TSLib issue #366).

The small archives (BasicMotions, JapaneseVowels, …) ship inside the ``aeon`` and ``sktime`` wheels as
``<package>/datasets/data/<Name>/<Name>_{TRAIN,TEST}.ts``; :func:`find_uea` finds them without importing either.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .data import FLAGS, DataError, shipped_data_dir

__all__ = ["read_ts", "UEADataset", "find_uea"]

COMMENTS = ("#", "%")


def _values(text: str, where: str, dim: int) -> np.ndarray:
    """One dimension's comma-separated values (``?`` = missing → NaN) as float64, or a :class:`DataError`."""
    tokens = [token.strip() for token in text.split(",")]
    try:
        return np.array([np.nan if token == "?" else float(token) for token in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if t != "?" and not _is_float(t))
        raise DataError(f"{where}: dimension {dim + 1} holds {bad!r}, not a number (or '?' for missing)") from None


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def read_ts(path: str | Path) -> tuple[list[np.ndarray], list[str] | None, dict[str, str]]:
    """Parse a ``.ts`` file → ``(series, labels, header)``.

    * ``series``: one float64 array ``[C, T_i]`` per case (``?`` → NaN);
    * ``labels``: each case's class label as written (``None`` if ``@classLabel false``);
    * ``header``: ``@key value`` lines before ``@data``, keys lower-cased (``header["classlabel"]`` = ``"true 1 2
      3"``).

    Lines starting with ``#`` or ``%`` are comments, blank lines are skipped; a data line is ``dim1:dim2:…[:label]``
    with comma-separated values. A missing ``@data`` line, dimensions of different lengths within a case, a case
    with another number of dimensions than the others (or than ``@dimensions``), a non-numeric value, or a label
    not declared in ``@classLabel`` raise a one-line :class:`DataError` naming the file and line. Time-stamped
    files (``@timeStamps true``) are not supported.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f".ts file not found: {path}")
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    labels: list[str] = []
    classes: list[str] | None = None
    has_labels = data = False
    dims = None
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            where = f"{path}:{number}"
            if not line or line.startswith(COMMENTS):
                continue
            if not data:
                key, _, value = line.partition(" ")
                key = key.lower()
                if key == "@data":
                    data = True
                    has_labels, classes = _label_spec(header, where)
                    dims = int(header["dimensions"]) if header.get("dimensions", "").isdigit() else None
                elif key.startswith("@"):
                    header[key[1:]] = value.strip()
                    if key == "@timestamps" and value.strip().lower() == "true":
                        raise DataError(f"{where}: time-stamped .ts files (@timeStamps true) are not supported")
                else:
                    raise DataError(f"{where}: expected an @key header line or @data before the data, got "
                                    f"{line[:40]!r}")
                continue
            parts = line.split(":")
            if has_labels:
                label = parts.pop().strip()
                if classes is not None and label not in classes:
                    raise DataError(f"{where}: class label {label!r} is not among @classLabel {' '.join(classes)}")
                labels.append(label)
            if dims is None:
                dims = len(parts)
            if len(parts) != dims:
                raise DataError(f"{where}: {len(parts)} dimensions, expected {dims}")
            case = [_values(part, where, d) for d, part in enumerate(parts)]
            lengths = {len(values) for values in case}
            if len(lengths) > 1:
                raise DataError(f"{where}: the dimensions of this case have different lengths "
                                f"({', '.join(str(len(v)) for v in case)})")
            series.append(np.stack(case))
    if not data:
        raise DataError(f"{path}: no @data line")
    if not series:
        raise DataError(f"{path}: no cases after @data")
    return series, (labels if has_labels else None), header


def _label_spec(header: dict[str, str], where: str) -> tuple[bool, list[str] | None]:
    """Whether data lines end with a label, and the declared classes (``@classLabel true a b c``; ``None`` for a
    regression target, ``@targetLabel true``)."""
    tokens = header.get("classlabel", "").split()
    if tokens and tokens[0].lower() == "true":
        if len(tokens) == 1:
            raise DataError(f"{where}: @classLabel true must list the class values")
        return True, tokens[1:]
    if header.get("targetlabel", "").split()[:1] == ["true"]:
        return True, None
    return False, None


def _interpolate(case: np.ndarray) -> np.ndarray:
    """Missing values of each channel filled by linear interpolation in time, the ends by the nearest value (TSLib's
    ``interpolate_missing``: pandas' linear interpolation with ``limit_direction='both'``); an all-missing channel
    stays NaN."""
    case = case.copy()
    steps = np.arange(case.shape[1])
    for channel in case:
        missing = np.isnan(channel)
        if missing.any() and not missing.all():
            channel[missing] = np.interp(steps[missing], steps[~missing], channel[~missing])
    return case


class UEADataset(Dataset):
    """A UEA/UCR classification split (TSLib's ``UEAloader`` + ``collate_fn``).

    Every case is padded with zeros at the end to ``max_len`` = the longest case of train ∪ test (TSLib sets
    ``seq_len = max(train.max_seq_len, test.max_seq_len)``); item: ``(x [max_len, C] float32, label int64,
    mask [max_len] float32)`` with mask 1 on real steps. Labels are indices into :attr:`classes`, the order of the
    training file's ``@classLabel`` header. Missing values are interpolated per case and channel; every channel is
    then standardised as TSLib's ``Normalizer("standardization")`` does (mean and sample std, ``ddof=1``, over all
    real steps, ``(x - mean) / (std + eps)``) but with statistics from the cases trained on only.

    ``val_fraction > 0`` moves that share of each class of the training file (rounded, at least one case left for
    training) to a ``val`` split, chosen with ``seed``; ``flag`` picks ``train``, ``val`` or ``test``.
    """

    def __init__(self, train_path: str | Path, test_path: str | Path, flag: str = "train",
                 val_fraction: float = 0.0, seed: int = 0):
        flag = flag.lower()
        if flag not in FLAGS:
            raise DataError(f"unknown split {flag!r}: choose one of {', '.join(FLAGS)}")
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if flag == "val" and val_fraction == 0:
            raise DataError("there is no val split with val_fraction=0 (TSLib validates on the test set; pass "
                            "val_fraction > 0 to hold out training cases instead)")
        train, train_labels, train_header = read_ts(train_path)
        test, test_labels, _ = read_ts(test_path)
        _, classes = _label_spec(train_header, str(train_path))
        if train_labels is None or test_labels is None or classes is None:
            raise DataError(f"{train_path if classes is None or train_labels is None else test_path}: no class "
                            f"labels (@classLabel true …) to classify")
        unknown = sorted(set(test_labels) - set(classes))
        if unknown:
            raise DataError(f"{test_path}: class labels {unknown} are not in the training file's @classLabel")
        if train[0].shape[0] != test[0].shape[0]:
            raise DataError(f"{train_path} has {train[0].shape[0]} dimensions, {test_path} has {test[0].shape[0]}")
        self.classes = classes
        train_y = np.array([classes.index(label) for label in train_labels], dtype=np.int64)
        val_rows = self._validation_rows(train_y, val_fraction, seed)
        fit_rows = np.setdiff1d(np.arange(len(train)), val_rows)
        chosen = {"train": fit_rows, "val": val_rows}.get(flag)
        cases = test if chosen is None else [train[i] for i in chosen]
        y = np.array([classes.index(label) for label in test_labels]) if chosen is None else train_y[chosen]
        steps = np.concatenate([_interpolate(train[i]) for i in fit_rows], axis=1)
        self.mean = np.nanmean(steps, axis=1)
        self.std = np.nanstd(steps, axis=1, ddof=1) + np.finfo(np.float64).eps
        self.max_len = max(case.shape[1] for case in train + test)
        self.flag, self.indices = flag, (np.arange(len(test)) if chosen is None else chosen)
        self.lengths = torch.tensor([case.shape[1] for case in cases])
        self.x = torch.zeros(len(cases), self.max_len, train[0].shape[0])
        for row, case in enumerate(cases):
            normed = (_interpolate(case) - self.mean[:, None]) / self.std[:, None]
            self.x[row, :case.shape[1]] = torch.from_numpy(np.nan_to_num(normed).T.astype(np.float32))
        self.y = torch.as_tensor(y, dtype=torch.int64)
        self.mask = (torch.arange(self.max_len) < self.lengths[:, None]).float()

    @staticmethod
    def _validation_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """Rows of the training file held out for validation: ``round(fraction · n_c)`` of each class ``c`` (at
        most ``n_c - 1``), drawn with a seeded generator; sorted."""
        if fraction == 0:
            return np.zeros(0, dtype=np.int64)
        rng = np.random.default_rng(seed)
        rows = []
        for c in np.unique(labels):
            members = np.flatnonzero(labels == c)
            take = min(int(round(fraction * len(members))), len(members) - 1)
            rows.append(rng.permutation(members)[:take])
        rows = np.sort(np.concatenate(rows))
        if rows.size == 0:
            raise DataError(f"val_fraction={fraction} holds out no training case (classes have "
                            f"{np.bincount(labels).max()} cases at most)")
        return rows

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_variates(self) -> int:
        return self.x.shape[2]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index], self.mask[index]


def find_uea(name: str, root: str | Path | None = None) -> tuple[Path, Path]:
    """``(train, test)`` paths of the UEA/UCR set ``name``: ``<name>_TRAIN.ts`` / ``<name>_TEST.ts`` in ``root`` or
    ``root/<name>/`` when given, else in an installed aeon's or sktime's ``datasets/data/<name>/`` (both wheels ship
    BasicMotions and JapaneseVowels; aeon also JapaneseVowels_eq in the JapaneseVowels folder)."""
    files = (f"{name}_TRAIN.ts", f"{name}_TEST.ts")
    if root is not None:
        folders = [Path(root), Path(root) / name]
    else:
        shipped = [shipped_data_dir(package) for package in ("aeon", "sktime")]
        folders = [d / folder for d in shipped if d is not None for folder in (name, name.split("_eq")[0])]
    for folder in folders:
        if all((folder / f).is_file() for f in files):
            return folder / files[0], folder / files[1]
    where = f"in {root} or {Path(root) / name}" if root is not None else "in an installed aeon or sktime"
    raise DataError(f"UEA set {name!r} not found {where}: `pip install aeon` (its wheel ships BasicMotions and "
                    f"JapaneseVowels), or pass the folder holding {files[0]} and {files[1]}")
