"""Training and evaluation of the time-series models in the Time-Series-Library protocol (thuml/Time-Series-Library
``exp/exp_long_term_forecasting.py``, ``exp_classification.py``, ``exp_anomaly_detection.py``, ``utils/tools.py``):
``nestedmemory ts train`` and ``nestedmemory ts eval``.

The protocol, as TSLib runs it:

* epochs over the shuffled training windows (Adam, TSLib's defaults: batch 32, lr 1e-4, 10 epochs); MSE on
  ``pred[:, -pred_len:, f_dim:]`` (``f_dim = -1`` for ``MS``) to forecast, MSE of the reconstruction for anomaly
  detection, cross-entropy (gradient norm clipped at 4) to classify;
* after every epoch the validation and test splits are scored; early stopping (``EarlyStopping``, patience 3)
  keeps the model of the best validation loss (classification: accuracy), a tie counting as better; the learning
  rate then follows ``adjust_learning_rate`` (``type1``: halved every epoch from the second on; classification
  adjusts every 5th epoch only);
* the best model is tested: MSE / MAE / RMSE / MAPE / MSPE on the scaled test windows (forecast), accuracy
  (classify), precision / recall / F1 with and without point adjustment at the ``anomaly_ratio`` threshold of the
  train and test reconstruction errors (anomaly).

The run folder is the language-model trainer's (:mod:`nestedmemory.train.loop`): ``config.yaml``,
``metrics.jsonl`` (one record per epoch), ``loss.png``, ``checkpoint-NNNNNN/`` folders written atomically
(:func:`~nestedmemory.train.checkpoint.save_folder`) with the newest linked into the run folder, the run-folder
lock, then ``results.json`` and a plot of the test predictions (``forecast.png`` / ``anomaly.png``). A checkpoint
is ``config.json`` (``model.config``, from which :meth:`TimeSeriesModel.from_config` rebuilds the model),
``model.safetensors`` (the best model so far: what ``ts eval`` tests) and ``trainer_state.pt`` (the current
weights, optimizer, random state, epoch and position, early-stopping state and the run's settings): a resumed run
continues exactly. A NaN or infinite loss, gradient, validation or weight stops the run with one line before it
reaches a checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import Dataset
from tqdm import tqdm

from ..train import checkpoint, lock, metrics, resume
from ..train.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    InvalidSetting,
    Limit,
    RunEvalConfig,
    Settings,
    check_device,
    check_folder,
    check_names,
)
from ..train.errors import CheckpointError, NonFiniteError, UserError
from .data import ANOMALY_SETS, LAYOUTS, AnomalyDataset, ForecastDataset, infer_layout, load_anomaly, read_table
from .metrics import accuracy, anomaly_scores, forecast_metrics
from .models import MODELS, TASKS, TimeSeriesModel, build_model
from .synthetic import lead_lag_classification, synthetic_anomaly, synthetic_ett
from .uea import UEADataset, find_uea

SYNTHETIC = "synthetic"
#: size of the default synthetic set of each task: rows of the ETT-like table (custom 70/10/20 split: 1209 / 105
#: / 305 windows at L = H = 96), training series of the lead/lag set, rows of the anomaly set's training and test
#: series each. Small enough that the default run (Chimera, D = 32) trains on two CPU cores in minutes.
SYNTHETIC_SIZE = {"forecast": 2000, "classify": 512, "anomaly": 2000}
FEATURES = ("M", "S", "MS")
#: TSLib's ``adjust_learning_rate`` schedules, and ``constant``.
LRADJ = ("type1", "type2", "type3", "cosine", "constant")
TYPE2 = {2: 5e-5, 4: 1e-5, 6: 5e-6, 8: 1e-6, 10: 5e-7, 15: 1e-7, 20: 5e-8}
#: TSLib's classification experiment: gradient norm clip and the epochs between learning-rate adjustments.
CLASSIFY_CLIP, CLASSIFY_LRADJ_EVERY = 4.0, 5
#: fields a resumed run may change: how long it trains, where it runs and reports, not what it computes.
RESUMABLE = frozenset({"out", "resume", "epochs", "max_steps", "patience", "keep_checkpoints", "device",
                       "progress"})
CONFIG_FILE, RESULTS_FILE, MODEL_CONFIG = "config.yaml", "results.json", "config.json"
PLOTS = {"forecast": "forecast.png", "anomaly": "anomaly.png"}


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class TSTrainConfig(Settings):
    """Train a time-series model in the Time-Series-Library protocol; write a run folder.

    Args:
        model: chimera, hydra, tsm2, or any preset of ``nestedmemory info`` (channel-independent, over patches)
        task: forecast, classify or anomaly
        data: ``synthetic`` (a deterministic set for the task); forecast: a TSLib CSV file (date, features…);
            classify: a UEA name (JapaneseVowels, BasicMotions: from an installed aeon / sktime) or a ``*_TRAIN.ts``
            file (its ``*_TEST.ts`` beside it); anomaly: an aeon anomaly set (daphnet, ecg-diff-count-3,
            KDD-TSAD_135) or a TimeEval CSV file (timestamp, values…, is_anomaly; split in time, half to train)
        synthetic_size: size of the synthetic set (default: 2000 hourly rows to forecast; 512 training series of
            96 steps to classify, with 1/4 as many to validate and 1/2 to test; 2000 training and 2000 test rows
            for anomalies)
        layout: split of a CSV: ETTh / ETTm (12/4/4 months of hours / 15 minutes) or custom (70/10/20 %); default:
            from the file name (ETTh*, ETTm*), else custom
        features: M (all variates → all), S (target → target), MS (all → target)
        target: the target column (S, MS)
        seq_len: input length L (forecast)
        label_len: the input's last steps also returned with the target windows (TSLib's decoder start)
        pred_len: forecast horizon H
        win_size: window length (anomaly)
        anomaly_ratio: percent of points flagged as anomalies (the threshold's percentile)
        val_fraction: classify: share of each class of the training file held out for validation (0: validate on
            the test split, as TSLib does)
        dim: width D of the tokens
        layers: backbone layers
        patch_len: steps per patch (1: every step a token)
        stride: steps between patches
        revin: reversible instance normalisation (forecast, anomaly)
        options: further keyword arguments of the model, e.g. ``{dropout: 0.1}``
        batch_size: windows per step
        lr: Adam learning rate
        epochs: training epochs
        patience: epochs without a better validation score before stopping early
        lradj: learning-rate schedule: TSLib's type1 (halve every epoch), type2, type3, cosine, or constant
        max_steps: stop after this many steps in all (the epoch it falls in ends there)
        keep_checkpoints: checkpoints kept in the run folder (the newest)
        out: run folder (default ``runs/ts-<model>-<task>-<date>-<time>``)
        resume: continue from a checkpoint, or the newest checkpoint of a run folder (with ``out``: into a new
            folder)
        seed: random seed of initialisation and data order
        device: ``cpu``, ``cuda`` (default: cuda if available)
        progress: show a progress bar
    """

    model: str = "chimera"
    task: str = "forecast"
    data: str = SYNTHETIC
    synthetic_size: int | None = None
    layout: str | None = None
    features: str = "M"
    target: str = "OT"
    seq_len: int = 96
    label_len: int = 48
    pred_len: int = 96
    win_size: int = 100
    anomaly_ratio: float = 1.0
    val_fraction: float = 0.2
    dim: int = 32
    layers: int = 2
    patch_len: int = 16
    stride: int = 8
    revin: bool = True
    options: dict = field(default_factory=dict)
    batch_size: int = 32
    lr: float = 1e-4
    epochs: int = 10
    patience: int = 3
    lradj: str = "type1"
    max_steps: int | None = None
    keep_checkpoints: int = 2
    out: str | None = None
    resume: str | None = None
    seed: int = 0
    device: str | None = None
    progress: bool = True

    LIMITS = {"seq_len": AT_LEAST_ONE, "label_len": NON_NEGATIVE, "pred_len": AT_LEAST_ONE, "win_size": AT_LEAST_ONE,
              "anomaly_ratio": Limit(0, 100, strict=True), "val_fraction": FRACTION, "dim": AT_LEAST_ONE,
              "layers": AT_LEAST_ONE, "patch_len": AT_LEAST_ONE, "stride": AT_LEAST_ONE,
              "batch_size": AT_LEAST_ONE, "lr": POSITIVE, "epochs": AT_LEAST_ONE, "patience": AT_LEAST_ONE,
              "keep_checkpoints": AT_LEAST_ONE, "seed": NON_NEGATIVE}

    def check(self) -> None:
        """Known names, consistent sizes, data that exists, a device this machine has, an ``out`` that can be a
        folder — before anything is read or written."""
        check_names("model", "model", [self.model], MODELS)
        check_names("task", "task", [self.task], TASKS)
        check_names("features", "features mode", [self.features], FEATURES)
        check_names("lradj", "schedule", [self.lradj], LRADJ)
        if self.layout is not None:
            check_names("layout", "layout", [self.layout], LAYOUTS)
        for name in ("synthetic_size", "max_steps"):
            problem = getattr(self, name) is not None and AT_LEAST_ONE.problem(getattr(self, name))
            if problem:
                raise InvalidSetting(f"--{name} {problem}")
        if self.label_len > self.seq_len:
            raise InvalidSetting(f"--label_len {self.label_len} is longer than --seq_len {self.seq_len} (the label "
                                 "steps are the input's last)")
        if self.anomaly_ratio == 100:
            raise InvalidSetting("--anomaly_ratio must be below 100 (percent of the points), got 100")
        if self.val_fraction == 1:
            raise InvalidSetting("--val_fraction must be below 1 (cases are left to train on), got 1")
        data_source(self.task, self.data)
        check_device("device", self.device)
        check_folder("out", self.out)

    @property
    def size(self) -> int:
        """The size of the synthetic set."""
        return self.synthetic_size or SYNTHETIC_SIZE[self.task]


@dataclass
class TSEvalConfig(RunEvalConfig):
    """Test a time-series run's model (its best checkpoint) on the test split; print a table, write eval.md and
    eval.json.

    Args:
        data: test on this data instead of the run's (the same task and variates)
        batch_size: windows per forward pass (default: the run's)
        out: folder of the table (default: the run folder)
        device: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``mps``
    """

    data: str | None = None


def data_source(task: str, data: str):
    """What ``--data`` names for ``task``, checked without reading it: ``synthetic``, a CSV path (forecast), the
    ``(train, test)`` ``.ts`` paths (classify) or an :data:`~.data.ANOMALY_SETS` name (anomaly; a case-insensitive
    prefix such as ``daphnet`` will do) or a TimeEval CSV path. Raises :class:`InvalidSetting` naming the problem."""
    if data == SYNTHETIC:
        return SYNTHETIC
    if task == "forecast":
        if not Path(data).is_file():
            raise InvalidSetting(f"--data {data}: no such file (forecasting reads a TSLib CSV, or 'synthetic')")
        return data
    if task == "classify":
        if not data.lower().endswith(".ts"):
            return find_uea(data)
        train = Path(data)
        test = train.with_name(train.name.replace("_TRAIN", "_TEST"))
        for path in (train, test) if test != train else ():
            if not path.is_file():
                raise InvalidSetting(f"--data {data}: no such file {path}")
        if test == train:
            raise InvalidSetting(f"--data {data}: name the *_TRAIN.ts file (its *_TEST.ts must be beside it)")
        return train, test
    if data.lower().endswith(".csv"):
        if not Path(data).is_file():
            raise InvalidSetting(f"--data {data}: no such file (anomaly detection reads a TimeEval CSV: timestamp, "
                                 "values…, is_anomaly)")
        return data
    matches = [name for name in ANOMALY_SETS if name.lower().startswith(data.lower())]
    if len(matches) != 1:
        raise InvalidSetting(f"--data: unknown anomaly set {data!r}; choose from {', '.join(ANOMALY_SETS)} or "
                             f"{SYNTHETIC}")
    return matches[0]


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------

class ArrayClassification(Dataset):
    """Classification items ``(x [L, C] float32, label int64, mask [L] float32)`` of equal-length series (the
    synthetic lead/lag set), with :class:`~.uea.UEADataset`'s attributes."""

    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
        self.mask = torch.ones(self.x.shape[:2])
        self.num_classes, self.max_len, self.num_variates = num_classes, self.x.shape[1], self.x.shape[2]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index], self.mask[index]


def load_splits(config: TSTrainConfig, flags=("train", "val", "test")) -> dict[str, Dataset]:
    """The splits ``flags`` of ``config.data`` (``train``, ``val``, ``test``; for anomaly detection also
    ``energy``: the training rows in non-overlapping windows, for the threshold). The test split of anomaly
    detection is the non-overlapping ``thre`` windows (every test point once, in order). Problems with the data
    raise a one-line :class:`~.data.DataError`."""
    source, task = data_source(config.task, config.data), config.task
    if task == "forecast":
        name = f"the synthetic set ({config.size} rows)" if source == SYNTHETIC else source
        table = synthetic_ett(config.size, "h") if source == SYNTHETIC else read_table(source)
        layout = config.layout or ("custom" if source == SYNTHETIC else infer_layout(source))
        return {flag: ForecastDataset(table, flag, config.seq_len, config.label_len, config.pred_len, config.features,
                                      config.target, layout, name=name) for flag in flags}
    if task == "classify":
        if source == SYNTHETIC:  # three independent draws (series, seed) of the lead/lag set
            draws = {"train": (config.size, 0), "val": (max(2, config.size // 4), 1),
                     "test": (max(2, config.size // 2), 2)}
            return {flag: ArrayClassification(*lead_lag_classification(draws[flag][0], seed=draws[flag][1]), 2)
                    for flag in flags}
        return {flag: UEADataset(*source, "test" if flag == "val" and not config.val_fraction else flag,
                                 config.val_fraction) for flag in flags}
    train, test, labels = synthetic_anomaly(config.size) if source == SYNTHETIC else load_anomaly(source)
    modes = {"train": ("train", 1), "val": ("val", 1), "test": ("thre", 1), "energy": ("train", config.win_size)}
    flags = {*flags, "energy"} if "test" in flags else flags
    return {flag: AnomalyDataset(train, test, labels, modes[flag][0], config.win_size, modes[flag][1])
            for flag in flags}


def batches(dataset: Dataset, batch_size: int, order=None):
    """Batches of ``dataset``'s items in ``order`` (default: as stored), the last one smaller (TSLib's loaders
    keep it: ``drop_last=False``)."""
    order = range(len(dataset)) if order is None else order
    for start in range(0, len(order), batch_size):
        yield [torch.stack(parts) for parts in zip(*(dataset[int(i)] for i in order[start:start + batch_size]))]


# ---------------------------------------------------------------------------------------------------------------
# the model's task
# ---------------------------------------------------------------------------------------------------------------

def build(config: TSTrainConfig, train: Dataset):
    """``config.model`` sized for the training split, initialised from ``config.seed``."""
    seq_len = train.max_len if config.task == "classify" else config.win_size if config.task == "anomaly" else (
        config.seq_len)
    torch.manual_seed(config.seed)
    return build_model(config.model, config.task, seq_len=seq_len, num_variates=train.num_variates,
                       pred_len=config.pred_len if config.task == "forecast" else None,
                       num_classes=train.num_classes if config.task == "classify" else None, dim=config.dim,
                       layers=config.layers, patch_len=config.patch_len, stride=config.stride, revin=config.revin,
                       **config.options)


def outputs(model, config: TSTrainConfig, batch: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prediction, target)`` of a batch, as the loss and the metrics compare them: the forecast's last
    ``pred_len`` steps of the ``f_dim:`` channels; class logits and labels; the reconstruction and the window."""
    if config.task == "forecast":
        x, y = batch
        f_dim = -1 if config.features == "MS" else 0
        return model(x)[:, -config.pred_len:, f_dim:], y[:, -config.pred_len:, f_dim:]
    if config.task == "classify":
        x, label, mask = batch
        return model(x, mask=mask), label
    return model(batch[0]), batch[0]


def loss_of(config: TSTrainConfig, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to classify, else MSE (TSLib's criteria)."""
    if config.task == "classify":
        return F.cross_entropy(prediction, target)
    return F.mse_loss(prediction, target)


@torch.no_grad()
def predict(model, config: TSTrainConfig, dataset: Dataset, batch_size: int, device) -> tuple[np.ndarray, ...]:
    """``(predictions, targets)`` of every item of ``dataset`` in order, float64 on the CPU."""
    was_training = model.training
    model.eval()
    pairs = [outputs(model, config, [t.to(device) for t in batch]) for batch in batches(dataset, batch_size)]
    model.train(was_training)
    return tuple(torch.cat([pair[i] for pair in pairs]).double().cpu().numpy() for i in (0, 1))


def score(config: TSTrainConfig, prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """An epoch's metrics of a split: ``loss`` (the training criterion over every item: the MSE, or the
    cross-entropy), plus ``mae`` (forecast) or ``accuracy`` (classify)."""
    if config.task == "classify":
        loss = F.cross_entropy(torch.from_numpy(prediction), torch.from_numpy(target).long()).item()
        return dict(loss=loss, accuracy=accuracy(prediction, target))
    if config.task == "forecast":
        result = forecast_metrics(prediction, target)
        return dict(loss=result["mse"], mae=result["mae"])
    return dict(loss=float(np.mean((prediction - target) ** 2)))


def energy(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """TSLib's anomaly score of every step: the reconstruction's squared error averaged over the variates."""
    return ((prediction - target) ** 2).mean(-1)


def score_test_split(model, config: TSTrainConfig, splits: dict, batch_size: int, device) -> tuple[dict, tuple]:
    """The test metrics of ``model`` (the protocol's, module docstring), with what they were computed on; and
    ``(predictions, targets)`` of the test split (anomaly: per-step energies and labels) for the plot."""
    test = splits["test"]
    prediction, target = predict(model, config, test, batch_size, device)
    if config.task == "forecast":
        results = dict(forecast_metrics(prediction, target), windows=len(test), seq_len=config.seq_len,
                       label_len=config.label_len, pred_len=config.pred_len, features=config.features,
                       scaled=True)
    elif config.task == "classify":
        results = dict(accuracy=accuracy(prediction, target), cases=len(test), seq_len=test.max_len)
    else:
        train_energy = energy(*predict(model, config, splits["energy"], batch_size, device))
        test_energy = test.stitch(energy(prediction, target))
        results = dict(anomaly_scores(train_energy, test_energy, test.labels.numpy(), config.anomaly_ratio),
                       points=len(test_energy), win_size=config.win_size, anomaly_ratio=config.anomaly_ratio)
        prediction, target = test_energy, test.labels.numpy()
    checkpoint.check_scores({"test": results}, "testing", skip=("mape", "mspe"))
    return results, (prediction, target)


def lr_at(config: TSTrainConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based): TSLib's ``adjust_learning_rate(optimizer, e + 1, args)``
    replayed after each epoch ``e`` before it (classification: after every 5th, as ``exp_classification``)."""
    lr = config.lr
    every = CLASSIFY_LRADJ_EVERY if config.task == "classify" else 1
    for done in range(every, epoch + 1, every):
        if config.lradj == "type1":
            lr = config.lr * 0.5 ** (done - 1)
        elif config.lradj == "type2":
            lr = TYPE2.get(done, lr)
        elif config.lradj == "type3":
            lr = config.lr if done < 3 else config.lr * 0.9 ** (done - 3)
        elif config.lradj == "cosine":
            lr = config.lr / 2 * (1 + math.cos(done / config.epochs * math.pi))
    return lr


# ---------------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------------

def train(config: TSTrainConfig) -> dict:
    """Run ``config``; returns ``run_dir``, ``step``, ``epoch``, ``best_epoch``, ``results`` (the test metrics;
    ``None`` if interrupted) and ``interrupted``. Problems with the inputs raise :class:`UserError` before anything
    is written; a NaN or infinite step, validation or weight raises :class:`NonFiniteError`, leaving the newest
    checkpoint (the last finite state) as it was."""
    torch.set_flush_denormal(True)  # as the language-model trainer: decaying states reach denormals, slow on CPUs
    return Trainer(config).run()


class Trainer:
    def __init__(self, config: TSTrainConfig):
        self.config = config
        self.splits = load_splits(config)
        resumed = self._resumed()
        self.run_dir = self._run_dir(resumed)
        self.lock = lock.RunLock(self.run_dir)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = build(config, self.splits["train"]).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        #: epochs finished; batches done in the current one; steps in all; the current epoch's [loss sum, steps]
        self.epoch, self.batch, self.step, self.accumulated = 0, 0, 0, [0.0, 0]
        #: early stopping: the best validation (``score``, ``epoch``, ``step``; its weights), epochs since
        self.best, self.best_weights, self.counter = None, None, 0
        if resumed:
            self._restore(*resumed)
        self.stop_requested = False

    # ---------------------------------------------------------------- setup
    def _resumed(self) -> tuple[dict, dict] | None:
        if self.config.resume is None:
            return None
        self.source, weights, state = resume.load_resumed(self.config.resume, self.config, RESUMABLE,
                                                          "time-series run", key="task")
        return weights, state

    def _run_dir(self, resumed) -> Path:
        config = self.config
        return resume.run_folder(self.source if resumed else None, config.out,
                                 f"runs/ts-{config.model}-{config.task}-{time.strftime('%Y%m%d-%H%M%S')}",
                                 "nestedmemory ts train")

    def _restore(self, best_weights: dict, state: dict) -> None:
        resume.restore(state, self.model, self.optimizer)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.accumulated, self.best, self.counter = state["accumulated"], state["best"], state["counter"]
        self.best_weights = best_weights if self.best is not None else None

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        """Train in the run folder, holding its lock (released however the run ends), then test the best model
        unless interrupted."""
        self.lock.acquire()
        try:
            self._start_run_folder()
            self._train()
            summary = dict(run_dir=str(self.run_dir), step=self.step, epoch=self.epoch,
                           best_epoch=self.best and self.best["epoch"], interrupted=self.stop_requested)
            if self.stop_requested:
                print(f"interrupted at step {self.step}; resume with: nestedmemory ts train --resume {self.run_dir}")
                return dict(summary, results=None)
            return dict(summary, results=self._finish())
        finally:
            self.lock.release()

    def _done(self) -> bool:
        config = self.config
        return (self.epoch >= config.epochs or self.counter >= config.patience
                or (config.max_steps is not None and self.step >= config.max_steps))

    def _train(self) -> None:
        """Epochs until ``epochs``, early stopping, ``max_steps`` or a Ctrl-C (which saves the position within the
        epoch: the resumed run goes on from the next batch)."""
        config, train_split = self.config, self.splits["train"]
        per_epoch = math.ceil(len(train_split) / config.batch_size)
        total = config.epochs * per_epoch if config.max_steps is None else min(config.max_steps,
                                                                                config.epochs * per_epoch)
        bar = tqdm(total=max(total, self.step), initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not config.progress)
        previous = signal.signal(signal.SIGINT, self._request_stop)
        try:
            while not (self._done() or self.stop_requested):
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(config, self.epoch)
                order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(
                    config.seed * 1_000_003 + self.epoch))
                for batch in batches(train_split, config.batch_size, order[self.batch * config.batch_size:]):
                    loss = self._train_step(batch)
                    self.step, self.batch = self.step + 1, self.batch + 1
                    self.accumulated = [self.accumulated[0] + loss, self.accumulated[1] + 1]
                    bar.update()
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.4f}", refresh=False)
                    if self.stop_requested or (config.max_steps is not None and self.step >= config.max_steps):
                        break
                if self.stop_requested:  # the position within the epoch is saved; the epoch goes on when resumed
                    self._save()
                    return
                self._end_epoch(bar)
        finally:
            signal.signal(signal.SIGINT, previous)
            bar.close()

    def _request_stop(self, signum, frame) -> None:
        """Ctrl-C: finish the current step, write a checkpoint, stop. A second Ctrl-C stops at once."""
        self.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _train_step(self, batch: list[torch.Tensor]) -> float:
        """One Adam step; its loss. The loss and gradient norm are checked before ``optimizer.step()``: a NaN or
        infinite update never reaches the weights."""
        prediction, target = outputs(self.model, self.config, [t.to(self.device) for t in batch])
        loss = loss_of(self.config, prediction, target)
        loss.backward()
        clip = CLASSIFY_CLIP if self.config.task == "classify" else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        value = loss.item()
        checkpoint.check_update(value, grad_norm, f"step {self.step + 1} (epoch {self.epoch + 1})", self.run_dir)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def _end_epoch(self, bar) -> None:
        """The end of an epoch (or of the run at ``max_steps``): validation and test scores, early stopping, the
        metrics record and a checkpoint. A NaN or infinite score raises :class:`NonFiniteError` first."""
        config = self.config
        scores = {split: score(config, *predict(self.model, config, self.splits[split], config.batch_size,
                                                self.device)) for split in ("val", "test")}
        checkpoint.check_scores(scores, f"epoch {self.epoch + 1} (step {self.step})", self.run_dir)
        total, count = self.accumulated
        record = dict(epoch=self.epoch + 1, step=self.step, lr=lr_at(config, self.epoch), loss=total / count,
                      **{f"{split}_{name}": v for split, values in scores.items() for name, v in values.items()})
        measure = scores["val"]["accuracy"] if config.task == "classify" else -scores["val"]["loss"]
        self.epoch, self.batch, self.accumulated = self.epoch + 1, 0, [0.0, 0]
        if self.best is None or measure >= self.best["score"]:  # TSLib's EarlyStopping: a tie is better
            self.best, self.counter = dict(score=measure, epoch=self.epoch, step=self.step), 0
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        else:
            self.counter += 1
        record.update(best_epoch=self.best["epoch"])
        metrics.append(self.run_dir / metrics.METRICS, record)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step", "best_epoch"))
        early = (f"; no better validation for {self.counter} epochs: stopping early" if self.counter >= config.patience
                 else "")
        bar.write(f"epoch {self.epoch} (step {self.step}): {shown}; best epoch {self.best['epoch']}{early}")
        self._save()

    # ---------------------------------------------------------------- files
    def _start_run_folder(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(dataclasses.asdict(self.config), sort_keys=False))
        if self.config.resume is not None:
            metrics.restart(self.source.parent / metrics.METRICS, self.run_dir / metrics.METRICS, self.step)
        sizes = " / ".join(f"{len(self.splits[s])}" for s in ("train", "val", "test"))
        parameters = sum(p.numel() for p in self.model.parameters())
        print(f"{self.config.model} ({parameters / 1e6:.3f}M parameters), {self.config.task} on {self.config.data} "
              f"(train / val / test items: {sizes}), {self.device.type}; run folder {self.run_dir}", flush=True)

    def _save(self) -> Path:
        """A checkpoint of the current step (skipped if written): ``config.json``, the best weights so far
        (the current ones before the first validation), the trainer state. NaN or infinite weights are never
        written: :class:`NonFiniteError`."""
        weights = checkpoint.finite_weights(self.model, self.step, self.run_dir)
        state = dict(config=dataclasses.asdict(self.config), epoch=self.epoch, batch=self.batch, step=self.step,
                     accumulated=self.accumulated, best=self.best, counter=self.counter, weights=weights,
                     optimizer=self.optimizer.state_dict(), rng=resume.rng_state())
        path = checkpoint.save_run(self.run_dir, self.step, self.model.config, self.best_weights or weights, state,
                                   self.config.keep_checkpoints)
        metrics.plot(metrics.read(self.run_dir / metrics.METRICS), self.run_dir / metrics.PLOT,
                     f"{self.config.model}: {self.config.task} on {self.config.data}",
                     "cross-entropy" if self.config.task == "classify" else "MSE (scaled)")
        return path

    def _finish(self) -> dict:
        """The best model on the test split: ``results.json``, the plot, a table."""
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        results, arrays = score_test_split(self.model, self.config, self.splits, self.config.batch_size, self.device)
        results = dict(results, model=self.config.model, task=self.config.task, data=self.config.data,
                       best_epoch=self.best and self.best["epoch"], epochs=self.epoch, steps=self.step)
        (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        plot(self.config, self.splits["test"], *arrays, results, self.run_dir)
        print(table(results, f"Test results of {self.run_dir} (best epoch {results['best_epoch']})"), flush=True)
        return results


# ---------------------------------------------------------------------------------------------------------------
# evaluation of a saved run, reports
# ---------------------------------------------------------------------------------------------------------------

def load_run(path: str | Path, device="cpu"):
    """``(model, settings, checkpoint folder)`` of a run folder or checkpoint: the best model in eval mode on
    ``device`` and the run's :class:`TSTrainConfig`. A missing, truncated or foreign checkpoint raises
    :class:`CheckpointError`."""
    folder = checkpoint.resolve(path)
    weights, state = checkpoint.load(folder)
    saved = state.get("config") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or "task" not in saved:
        raise CheckpointError(f"{folder} is not a checkpoint of a time-series run")
    try:
        model = TimeSeriesModel.from_config(json.loads((folder / MODEL_CONFIG).read_text(encoding="utf-8")))
        model.load_state_dict(weights)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise CheckpointError(f"cannot load the model of {folder}: {' '.join(str(error).split())}") from None
    names = {f.name for f in dataclasses.fields(TSTrainConfig)}
    settings = TSTrainConfig(**{k: v for k, v in saved.items() if k in names and k not in ("out", "resume")})
    return model.to(device).eval(), settings, folder


def evaluate(run: str | Path, config: TSEvalConfig) -> dict:
    """Test the best model of ``run`` (module docstring's metrics) on the run's data or ``config.data``; print the
    table and write ``eval.md`` / ``eval.json`` to ``config.out`` or the run folder. Returns the results."""
    from ..tasks.report import write_report

    device = torch.device(config.device or "cpu")
    model, settings, folder = load_run(run, device)
    settings = dataclasses.replace(settings, data=config.data or settings.data,
                                   batch_size=config.batch_size or settings.batch_size, device=None)
    broken = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise NonFiniteError(f"the model of {folder} has NaN or infinite weights ({broken[0]} and {len(broken) - 1} "
                             "more)")
    splits = load_splits(settings, ("test",))
    classes = getattr(splits["test"], "num_classes", None)
    if settings.task == "classify" and classes != model.config["num_classes"]:
        raise UserError(f"--data {settings.data} has {classes} classes, the model of {folder} "
                        f"{model.config['num_classes']}")
    results, _ = score_test_split(model, settings, splits, settings.batch_size, device)
    results = dict(results, model=settings.model, task=settings.task, data=settings.data, checkpoint=str(folder))
    title = f"Evaluation of {folder} on {settings.data} (test split)"
    out = Path(config.out or (folder.parent if checkpoint.checkpoints(folder.parent) else folder))
    rows = [[name, f"{value:.4g}" if isinstance(value, float) else value] for name, value in results.items()]
    markdown, data = write_report(out / "eval.md", title=title, header=["metric", "value"], rows=rows, data=results)
    print(table(results, title) + f"\nwritten to {markdown} and {data}")
    return results


def table(results: dict, title: str) -> str:
    """``results`` as a two-column text table under ``title``."""
    width = max(map(len, results))
    lines = [f"{name:<{width}}  {f'{value:.4f}' if isinstance(value, float) else value}"
             for name, value in results.items()]
    return "\n".join([title, *lines])


def plot(config: TSTrainConfig, test: Dataset, prediction: np.ndarray, target: np.ndarray, results: dict,
         folder: Path) -> None:
    """``forecast.png``: four test windows evenly spread, the input's last channel (the target for ``S`` / ``MS``)
    followed by the truth and the forecast; ``anomaly.png``: the test anomaly score against time with the
    threshold and the labelled anomalies shaded. (Nothing to draw for classification.)"""
    if config.task not in PLOTS:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if config.task == "forecast":
        picks = np.unique(np.linspace(0, len(prediction) - 1, 4).astype(int))
        figure, axes = plt.subplots(len(picks), 1, figsize=(8, 2.2 * len(picks)), squeeze=False)
        for axis, index in zip(axes[:, 0], picks):
            history = test[int(index)][0][:, -1].numpy()
            ahead = np.arange(len(history), len(history) + config.pred_len)
            axis.plot(np.arange(len(history)), history, color="0.4", label="input")
            axis.plot(ahead, target[index, :, -1], label="truth")
            axis.plot(ahead, prediction[index, :, -1], label="forecast")
            axis.set_title(f"test window {index}, variate {test.columns[-1]}", fontsize=9)
        axes[0, 0].legend(fontsize=8)
    else:
        figure, axis = plt.subplots(figsize=(10, 3))
        axis.plot(prediction, linewidth=0.7, label="reconstruction error")
        axis.axhline(results["threshold"], color="black", linestyle="--", linewidth=0.8, label="threshold")
        axis.fill_between(np.arange(len(target)), 0, 1, where=target > 0, alpha=0.25, color="red",
                          transform=axis.get_xaxis_transform(), label="labelled anomaly")
        axis.set_xlabel("test step")
        axis.legend(fontsize=8)
    figure.suptitle(f"{config.model} on {config.data} (test split, scaled)", fontsize=10)
    figure.tight_layout()
    figure.savefig(folder / PLOTS[config.task], dpi=100)
    plt.close(figure)


__all__ = ["TSTrainConfig", "TSEvalConfig", "train", "evaluate", "load_run", "load_splits", "lr_at", "score_test_split"]
