"""A Time-Series-Library model (thuml/Time-Series-Library, ``models/*.py``): ``Model(configs)`` with TSLib's
``forward(x_enc, x_mark_enc, x_dec, x_mark_dec, mask=None)``, so this package's models run in TSLib's experiments.
Register it in ``exp/exp_basic.py`` (``model_dict["Chimera"] = nestedmemory.timeseries.tslib``) and pass
``--model Chimera``.

``configs`` (TSLib's ``run.py`` arguments): ``task_name`` (``long_term_forecast`` / ``short_term_forecast`` →
forecast, ``classification``, ``anomaly_detection``; imputation is not supported), ``seq_len``, ``pred_len``,
``enc_in`` (the variates), ``num_class``, ``d_model``, ``e_layers``, ``dropout`` (the head's), ``use_norm`` (RevIN),
``patch_len`` (default 16) and, beyond TSLib's: ``stride`` (default ``patch_len // 2``, PatchTST's 16 / 8),
``model_name`` (the :func:`~.models.build_model` name; default ``configs.model`` lower-cased: ``Chimera`` →
``chimera``, ``titans-lmm``) and ``model_options`` (a dict of further :func:`~.models.build_model` options).

Inputs as TSLib's experiments pass them: ``x_enc [B, L, enc_in]``; for classification the padding mask
``[B, L]`` arrives as ``x_mark_enc`` (``exp_classification.py``: ``model(batch_x, padding_mask, None, None)``);
the time marks and the decoder inputs are not used. Outputs: ``[B, pred_len, enc_in]``, ``[B, num_class]``,
``[B, seq_len, enc_in]``.
"""

from __future__ import annotations

from torch import nn

from ..train.config import check_names
from .models import build_model

#: TSLib task name → this package's task.
TASKS = {"long_term_forecast": "forecast", "short_term_forecast": "forecast", "classification": "classify",
         "anomaly_detection": "anomaly"}


class Model(nn.Module):
    def __init__(self, configs):
        super().__init__()
        check_names("task_name", "task", [configs.task_name], TASKS)
        self.task = TASKS[configs.task_name]
        patch_len = getattr(configs, "patch_len", 16)
        self.model = build_model(
            (getattr(configs, "model_name", None) or configs.model).lower(), self.task,
            seq_len=configs.seq_len, num_variates=configs.enc_in, dim=configs.d_model, layers=configs.e_layers,
            pred_len=configs.pred_len if self.task == "forecast" else None,
            num_classes=configs.num_class if self.task == "classify" else None,
            patch_len=patch_len, stride=getattr(configs, "stride", max(1, patch_len // 2)),
            revin=bool(getattr(configs, "use_norm", True)), head_dropout=getattr(configs, "dropout", 0.0),
            **getattr(configs, "model_options", {}))

    def forward(self, x_enc, x_mark_enc=None, x_dec=None, x_mark_dec=None, mask=None):
        return self.model(x_enc, x_mark_enc if self.task == "classify" else None)
