"""Multivariate time series in the Time-Series-Library protocol (issue 15): models over ``[batch, time, variates]``.

* models (:func:`build_model`): :mod:`.chimera` (2-D selective SSM across time and variates, Behrouz et al.,
  NeurIPS 2024), :mod:`.hydra` (a two-headed 2-D test-time memory on the library's memory core; our reading of
  Meskin et al. 2025), :mod:`.tsm2` (MambaMixer's time-series model), any preset of the zoo as a
  channel-independent forecaster over patches (:mod:`.zoo`), and :mod:`.baselines` from ``neuralforecast``
  (optional); :mod:`.embed` / :mod:`.heads` / :mod:`.models` make a backbone a task model; :mod:`.tslib` is
  TSLib's ``Model(configs)`` adapter;
* data: :mod:`.data` (TSLib CSV splits, scaler and windows; anomaly windows and aeon's anomaly files),
  :mod:`.uea` (``.ts`` files, UEA classification), :mod:`.synthetic` (deterministic generators); :mod:`.metrics`;
* :mod:`.train`: ``nestedmemory ts train | eval`` (run folder, checkpoints, early stopping).
"""

from .models import TASKS, TimeSeriesModel, build_model

__all__ = ["TASKS", "TimeSeriesModel", "build_model"]
