"""Task models around a backbone: ``model(x [B, L, V], mask=None)`` → a forecast ``[B, pred_len, V]``, class
logits ``[B, num_classes]`` or a reconstruction ``[B, L, V]`` (anomaly detection).

The pipeline (PatchTST, Nie et al., ICLR 2023, Fig. 1; TSLib's ``forecast`` / ``classification`` /
``anomaly_detection`` methods): RevIN normalisation (forecast and anomaly; :mod:`.embed`) → patching and token
embedding → the backbone ``[B, V, N, D] → [B, V, N, D]`` (causal in N) → a head (:mod:`.heads`) → RevIN
de-normalisation. Classification has no RevIN: a series' level and scale are class evidence (standing vs. running
in BasicMotions), and TSLib's TimesNet / iTransformer classify raw windows too. Its padding mask (1 = real step)
zeroes the padded steps before patching, so their values never reach the model, and marks the tokens that hold a
real step for the head's mean; with a causal backbone and padding at the end (TSLib's ``collate_fn``), padding
changes nothing.

:func:`build_model` builds one by name: ``chimera`` / ``tsm2`` / ``hydra`` (the channel-mixing models, imported
when asked for), any preset of :data:`nestedmemory.models.PRESETS` as the channel-independent backbone of
:mod:`.zoo`, or a forecasting baseline of a maintained library (:mod:`.baselines`: ``dlinear``, ``patchtst``,
``itransformer``, … from ``neuralforecast``, an optional dependency). ``model.config`` holds the arguments, and
:meth:`TimeSeriesModel.from_config` rebuilds the model.
"""

from __future__ import annotations

import importlib
import numbers

import torch
from torch import nn

from ..models import PRESETS
from ..train.config import InvalidSetting, check_names
from ..train.errors import UserError
from .baselines import MODELS as BASELINES
from .baselines import baseline
from .embed import PatchEmbedding, RevIN, num_tokens, patchify
from .heads import ClassificationHead, ForecastHead, ReconstructionHead

TASKS = ("forecast", "classify", "anomaly")
#: the channel-mixing backbones: name → (module of this package, class); each is ``Class(dim, num_variates,
#: layers, **options)``.
CHANNEL_MIXING = {"chimera": (".chimera", "ChimeraBackbone"), "tsm2": (".tsm2", "TSM2Backbone"),
                  "hydra": (".hydra", "HydraBackbone")}
MODELS = (*CHANNEL_MIXING, *PRESETS, *BASELINES)
#: the options of :class:`TimeSeriesModel` itself; the other options of :func:`build_model` go to the backbone.
MODEL_OPTIONS = ("variate_embedding", "positional", "affine", "head_dropout")


def _check_count(name: str, value, low: int = 1) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise InvalidSetting(f"--{name} must be an integer >= {low}, got {value!r}")


class TimeSeriesModel(nn.Module):
    """``backbone`` (``[B, V, N, D] → [B, V, N, D]``, causal in N) made a ``task`` model (module docstring).

    ``seq_len`` L and ``num_variates`` V: the input's shape; ``pred_len`` (forecast) and ``num_classes`` (classify);
    ``dim`` D; ``patch_len`` / ``stride`` (:func:`~.embed.patchify`; ``stride <= patch_len``, so every step is in a
    patch; 1 / 1 for raw steps); ``revin`` / ``affine`` (:class:`~.embed.RevIN`, forecast and anomaly);
    ``variate_embedding`` / ``positional`` (:class:`~.embed.PatchEmbedding`); ``head_dropout`` on the head's input
    features (PatchTST's name; a backbone's own dropout, where it has one, is a backbone option). ``config``: the
    :func:`build_model` arguments (``None`` when built directly)."""

    def __init__(self, backbone: nn.Module, task: str, *, seq_len: int, num_variates: int, pred_len: int | None = None,
                 num_classes: int | None = None, dim: int = 64, patch_len: int = 16, stride: int = 8,
                 revin: bool = True, affine: bool = False, variate_embedding: bool = False, positional: bool = False,
                 head_dropout: float = 0.0):
        super().__init__()
        check_sizes(task, seq_len=seq_len, num_variates=num_variates, pred_len=pred_len, num_classes=num_classes,
                    dim=dim, patch_len=patch_len, stride=stride, head_dropout=head_dropout)
        self.task, self.seq_len, self.num_variates = task, seq_len, num_variates
        self.patch_len, self.stride = patch_len, stride
        self.config: dict | None = None
        n = num_tokens(seq_len, patch_len, stride)
        self.revin = RevIN(num_variates, affine) if revin and task != "classify" else None
        self.embed = PatchEmbedding(seq_len, num_variates, dim, patch_len, stride, variate_embedding, positional)
        self.backbone = backbone
        if task == "forecast":
            self.head = ForecastHead(n, dim, pred_len, head_dropout)
        elif task == "classify":
            self.head = ClassificationHead(num_variates, dim, num_classes, head_dropout)
        else:
            self.head = ReconstructionHead(dim, patch_len, stride, seq_len)

    @classmethod
    def from_config(cls, config: dict) -> TimeSeriesModel:
        """The model :func:`build_model` builds from ``config`` (a ``model.config``), freshly initialised."""
        return build_model(**config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, L, V]``; ``mask [B, L]`` (1 = real step), classification only."""
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, self.num_variates):
            raise InvalidSetting(f"the model takes inputs [batch, seq_len={self.seq_len}, "
                                 f"num_variates={self.num_variates}], got {list(x.shape)}")
        if mask is not None and self.task != "classify":
            raise InvalidSetting(f"a padding mask is for classification; the {self.task} model takes full windows")
        if self.task == "classify":
            return self._classify(x, mask)
        stats = None
        if self.revin is not None:
            x, stats = self.revin.normalise(x)
        y = self.head(self.backbone(self.embed(x)))
        return y if stats is None else self.revin.denormalise(y, stats)

    def _classify(self, x, mask):
        token_mask = None
        if mask is not None:
            mask = mask.to(x.dtype)
            x = x * mask.unsqueeze(-1)
            token_mask = self._token_mask(mask)
        return self.head(self.backbone(self.embed(x)), token_mask)

    def _token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A step mask ``[B, L]`` → the token mask ``[B, N]``: 1 where the token's patch holds a real step."""
        return patchify(mask.unsqueeze(-1), self.patch_len, self.stride).amax(-1)[:, 0]


def check_sizes(task: str, *, seq_len, num_variates, pred_len, num_classes, dim, patch_len, stride,
                head_dropout=0.0, layers=1) -> None:
    """Raise :class:`InvalidSetting` (one line, naming the argument) unless ``task`` is known and the sizes fit it."""
    check_names("task", "task", [task], TASKS)
    if task == "forecast" and pred_len is None:
        raise InvalidSetting("--pred_len is needed to forecast")
    if task == "classify" and num_classes is None:
        raise InvalidSetting("--num_classes is needed to classify")
    counts = dict(seq_len=seq_len, num_variates=num_variates, dim=dim, layers=layers, patch_len=patch_len,
                  stride=stride, pred_len=pred_len if task == "forecast" else 1)
    for name, value in counts.items():
        _check_count(name, value)
    if task == "classify":
        _check_count("num_classes", num_classes, 2)
    if seq_len < patch_len:
        raise InvalidSetting(f"--seq_len {seq_len} is shorter than --patch_len {patch_len}")
    if stride > patch_len:
        raise InvalidSetting(f"--stride {stride} is longer than --patch_len {patch_len}: the steps between patches "
                             f"would be skipped")
    if isinstance(head_dropout, bool) or not (isinstance(head_dropout, numbers.Real) and 0 <= head_dropout < 1):
        raise InvalidSetting(f"--head_dropout must be in [0, 1), got {head_dropout!r}")


def backbone_class(name: str) -> type[nn.Module]:
    """The backbone class of model ``name`` (the zoo's :class:`~.zoo.ChannelIndependent` for a preset)."""
    check_names("model", "model", [name], MODELS)
    if name in CHANNEL_MIXING:
        module, attribute = CHANNEL_MIXING[name]
        return getattr(importlib.import_module(module, __package__), attribute)
    from .zoo import ChannelIndependent

    return ChannelIndependent


def build_model(name: str, task: str, *, seq_len: int, num_variates: int, pred_len: int | None = None,
                num_classes: int | None = None, dim: int = 64, layers: int = 2, patch_len: int = 16, stride: int = 8,
                revin: bool = True, **options) -> TimeSeriesModel:
    """Model ``name`` for ``task`` (module docstring). ``options``: those of :class:`TimeSeriesModel`
    (:data:`MODEL_OPTIONS`; ``variate_embedding`` defaults to on for the channel-mixing models and is refused by
    the channel-independent ones, which must not tell variates apart) and the backbone's keywords."""
    config = dict(name=name, task=task, seq_len=seq_len, num_variates=num_variates, pred_len=pred_len,
                  num_classes=num_classes, dim=dim, layers=layers, patch_len=patch_len, stride=stride, revin=revin,
                  **options)
    if name in BASELINES:
        model = baseline(name, seq_len, pred_len, num_variates, task, dim=dim, layers=layers, patch_len=patch_len,
                         stride=stride, revin=revin, **options)
        model.config = config
        return model
    cls = backbone_class(name)
    own = {key: options.pop(key) for key in MODEL_OPTIONS if key in options}
    check_sizes(task, seq_len=seq_len, num_variates=num_variates, pred_len=pred_len, num_classes=num_classes,
                dim=dim, patch_len=patch_len, stride=stride, head_dropout=own.get("head_dropout", 0.0),
                layers=layers)
    if name in CHANNEL_MIXING:
        own.setdefault("variate_embedding", True)
    elif own.get("variate_embedding"):
        raise InvalidSetting(f"--model {name} is channel-independent: a variate embedding would tell the variates "
                             f"apart")
    else:
        options["preset"] = name
    try:
        backbone = cls(dim, num_variates, layers, **options)
    except (TypeError, ValueError) as error:  # a keyword the backbone does not take, a value it refuses
        if isinstance(error, UserError):
            raise
        raise InvalidSetting(f"--model {name}: {error}") from None
    model = TimeSeriesModel(backbone, task, seq_len=seq_len, num_variates=num_variates, pred_len=pred_len,
                            num_classes=num_classes, dim=dim, patch_len=patch_len, stride=stride, revin=revin, **own)
    model.config = config
    return model
