"""Time-series forecasting baselines from a maintained library, as plain PyTorch modules on our windows.

``baseline(name, seq_len, pred_len, num_variates)`` builds the model of Nixtla's ``neuralforecast`` (Apache-2.0;
an optional benchmark dependency, ``pip install nestedmemory[bench]``) and wraps it so that ``model(x [B, L, V])``
returns ``[B, pred_len, V]``, the forecast contract of ``nestedmemory.timeseries`` (TSLib's ``(seq_x → pred)``
without time marks). Nothing of the library's data pipeline, scalers or Lightning trainer is used: only each
model's ``forward(windows_batch)``, whose batch is a dict with ``insample_y`` ``[B, L, n_series]`` (its
``BaseModel._parse_windows``); with the library's default point loss (MAE, ``domain_map`` the identity) the output
is the forecast itself, ``[B, h, n_series]``.

How each model sees the variates (its ``MULTIVARIATE`` class flag):

- channel-independent (DLinear, NLinear, PatchTST): the library models one series at a time (``n_series = 1``);
  the ``V`` variates are folded into the batch, ``[B, L, V] → [B·V, L, 1]``, one set of weights shared across
  variates — TSLib's DLinear (``individual=False``) and PatchTST (Nie et al. 2023, §3.1 "channel-independence").
- multivariate (iTransformer, TSMixer, TimeMixer, SOFTS): ``n_series = V``, the window goes in whole.

Instance normalisation lives inside the library's models: PatchTST's RevIN (Kim et al. 2022), iTransformer's,
TimeMixer's and SOFTS' ``use_norm`` (the Non-stationary Transformer's mean / std), TSMixer's RevIN; DLinear has
none, NLinear subtracts the last value (Zeng et al. 2023). Our ``revin`` knob switches the model's own one where
it has one. The library's PatchTST defaults to RevIN with ``subtract_last=True``; here it is ``False`` (mean /
std), as in the PatchTST paper's scripts and TSLib's PatchTST.

Shared knobs (``dim``, ``layers``, ``heads``, ``ff``, ``dropout``, ``patch_len``, ``stride``, ``moving_avg``,
``revin``) are renamed to each model's argument (``MODELS``); a knob that a model does not have is ignored, as
TSLib's ``run.py`` hands every model all its arguments; one left at ``None`` keeps the library's default. Any other
keyword goes to the library's constructor under its own name (e.g. ``d_core`` for SOFTS). Classification and
anomaly detection are not offered: the library forecasts only.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import random

import numpy as np
import torch
from torch import nn

from ..train.errors import UserError

PACKAGE = "neuralforecast"
INSTALL_HINT = "pip install 'neuralforecast>=3.3,<4' (or nestedmemory[bench])"
# name -> (module of neuralforecast.models, class, {our knob: the class's argument}, our defaults for the class)
MODELS = {
    "dlinear": ("dlinear", "DLinear", {"moving_avg": "moving_avg_window"}, {}),
    "nlinear": ("nlinear", "NLinear", {}, {}),
    "patchtst": ("patchtst", "PatchTST",
                 {"dim": "hidden_size", "layers": "encoder_layers", "heads": "n_heads", "ff": "linear_hidden_size",
                  "dropout": "dropout", "patch_len": "patch_len", "stride": "stride", "revin": "revin"},
                 {"revin_subtract_last": False}),
    "itransformer": ("itransformer", "iTransformer",
                     {"dim": "hidden_size", "layers": "e_layers", "heads": "n_heads", "ff": "d_ff",
                      "dropout": "dropout", "revin": "use_norm"}, {}),
    "tsmixer": ("tsmixer", "TSMixer", {"dim": "ff_dim", "layers": "n_block", "dropout": "dropout", "revin": "revin"},
                {}),
    "timemixer": ("timemixer", "TimeMixer",
                  {"dim": "d_model", "layers": "e_layers", "ff": "d_ff", "dropout": "dropout",
                   "moving_avg": "moving_avg", "revin": "use_norm"}, {}),
    "softs": ("softs", "SOFTS", {"dim": "hidden_size", "layers": "e_layers", "ff": "d_ff", "dropout": "dropout",
                                 "revin": "use_norm"}, {}),
}
KNOBS = ("dim", "layers", "heads", "ff", "dropout", "patch_len", "stride", "moving_avg", "revin")


class BaselineError(UserError, ValueError):
    """A baseline that does not exist, or options that its library model rejects."""


class LibraryBaseline(nn.Module):
    """A library forecaster behind our contract: ``forward(x [B, L, V]) -> [B, pred_len, V]``.

    ``config`` rebuilds it: ``baseline(**model.config)``."""

    def __init__(self, net: nn.Module, config: dict):
        super().__init__()
        self.net = net
        self.config = config
        self.multivariate = bool(net.MULTIVARIATE)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise BaselineError(f"{self.config['name']}: the library baselines take no mask (forecast windows are "
                                "complete)")
        if x.ndim != 3 or x.shape[1:] != (self.config["seq_len"], self.config["num_variates"]):
            raise BaselineError(f"{self.config['name']}: expected x of shape [B, {self.config['seq_len']}, "
                                f"{self.config['num_variates']}], got {list(x.shape)}")
        batch, length, variates = x.shape
        y = x if self.multivariate else x.transpose(1, 2).reshape(batch * variates, length, 1)
        out = self.net(_windows(y))  # [B, H, V] or [B·V, H, 1]
        if self.multivariate:
            return out
        return out.reshape(batch, variates, -1).transpose(1, 2)


def _windows(insample_y: torch.Tensor) -> dict:
    """The library's ``windows_batch`` without exogenous inputs (``BaseModel._parse_windows``'s keys)."""
    return dict(insample_y=insample_y, insample_mask=torch.ones_like(insample_y), futr_exog=None, hist_exog=None,
                stat_exog=None)


@contextlib.contextmanager
def _rng_kept():
    """The library's ``BaseModel.__init__`` calls Lightning's ``seed_everything(random_seed)``: it reseeds torch,
    numpy and ``random`` globally, sets ``PL_GLOBAL_SEED`` and logs "Seed set to …". Undo all of that, so that
    building a baseline draws from the caller's RNG like any ``nn.Module`` and leaves it as it found it."""
    np_state, py_state = np.random.get_state(), random.getstate()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    seed_log = logging.getLogger("lightning_fabric.utilities.seed")
    level = seed_log.level
    seed_log.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng():
            yield
    finally:
        seed_log.setLevel(level)
        np.random.set_state(np_state)
        random.setstate(py_state)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def baseline(name: str, seq_len: int, pred_len: int, num_variates: int, task: str = "forecast", *,
             dim: int | None = None, layers: int | None = None, heads: int | None = None, ff: int | None = None,
             dropout: float | None = None, patch_len: int | None = None, stride: int | None = None,
             moving_avg: int | None = None, revin: bool | None = None, **options) -> LibraryBaseline:
    """Build library baseline ``name`` (a key of ``MODELS``) for windows ``[B, seq_len, num_variates]`` →
    ``[B, pred_len, num_variates]``. Its weights are drawn from a seed taken from torch's global RNG, so
    ``torch.manual_seed(s)`` before the call fixes them."""
    if name not in MODELS:
        raise BaselineError(f"unknown baseline {name!r}; choose one of {', '.join(MODELS)}")
    if task != "forecast":
        raise BaselineError(f"{name}: task {task!r} is not offered by {PACKAGE}, which only forecasts")
    for key, value in (("seq_len", seq_len), ("pred_len", pred_len), ("num_variates", num_variates)):
        if not isinstance(value, int) or value < 1:
            raise BaselineError(f"{name}: {key} must be a positive integer, got {value!r}")
    try:
        module = importlib.import_module(f"{PACKAGE}.models.{MODELS[name][0]}")
    except ImportError:
        raise BaselineError(f"baseline {name!r} needs {PACKAGE}: {INSTALL_HINT}") from None
    _, cls_name, renames, defaults = MODELS[name]
    cls = getattr(module, cls_name)
    knobs = dict(dim=dim, layers=layers, heads=heads, ff=ff, dropout=dropout, patch_len=patch_len, stride=stride,
                 moving_avg=moving_avg, revin=revin)
    kwargs = {**defaults, **{renames[k]: v for k, v in knobs.items() if v is not None and k in renames}, **options}
    if cls.MULTIVARIATE:
        kwargs["n_series"] = num_variates
    # the constructors end in **trainer_kwargs (kept for a Lightning Trainer we never build): check names here
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - {k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD})
    if unknown:
        raise BaselineError(f"{name}: {cls_name} has no option {', '.join(unknown)}")
    seed = int(torch.randint(2**31 - 1, ()))
    with _rng_kept():
        net = cls(h=pred_len, input_size=seq_len, random_seed=seed, **kwargs)
    config = dict(name=name, seq_len=seq_len, pred_len=pred_len, num_variates=num_variates, task=task,
                  **{k: v for k, v in knobs.items() if v is not None}, **options)
    return LibraryBaseline(net, config)
