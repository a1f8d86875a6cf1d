"""Multivariate time series (issue 15): Chimera, Hydra and TSM2 against channel-independent models of the zoo and
maintained-library baselines, in the Time-Series-Library protocol (``nestedmemory ts train``'s loop, one run folder
per model in a temporary directory).

Sections (``--section``, default all; ``--quick`` shrinks each to a smoke run):

- ``forecast``: the synthetic cross-variate set (:func:`~nestedmemory.timeseries.synthetic.synthetic_ett`, OT driven
  by the other variates ``lag`` steps earlier; hourly, custom 70/10/20 split), ``MS`` (all variates in, OT out:
  a channel-independent model sees only OT's own history), L = H = ``lag`` = 96, MSE / MAE on the scaled test
  windows; Chimera, Hydra, TSM2, their ablations without the variate direction (Chimera ``coupling=False``, one
  direction, input-independent Δ, B, C; Hydra ``variate="none"``), the zoo's ``titans-lmm`` and ``mamba2`` over
  patches per variate, and DLinear / PatchTST / iTransformer from ``neuralforecast`` (if installed) at the same
  width, layers, patches, windows, optimiser and budget.
- ``classify``: the synthetic lead/lag set (which of two variates leads: invisible to one channel alone), UEA
  JapaneseVowels and BasicMotions (from an installed aeon / sktime, ``pip install --no-deps aeon``), accuracy; with
  1-NN (Euclidean) and a ridge classifier on the flattened series from scikit-learn as the library baselines
  (``neuralforecast`` only forecasts).
- ``anomaly``: aeon's ``ecg-diff-count-3`` (Daphnet_S06R02E0's labels are all 0 in aeon 1.6: no F1 exists) and the
  synthetic set; reconstruction error, F1 with and without point adjustment; scikit-learn's IsolationForest as
  the library baseline under the same threshold rule.
- ``hydra``: Hydra's 2-D chunk-wise training against its exact 2-D recurrence (``time_chunk = variate_chunk =
  1``) with the same parameters: one training step's time (fwd + bwd, alternating, medians, one thread) over
  patches and over raw steps, and the test MSE of each trained the same number of steps.

Every number is labelled synthetic where the data are. Writes ``docs/timeseries.md`` and ``.json`` (each section
replaces its part); prints the tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nestedmemory.runtime import configure_cpu
from nestedmemory.tasks.report import write_keeping_notes
from nestedmemory.timeseries.data import load_anomaly
from nestedmemory.timeseries.metrics import anomaly_scores
from nestedmemory.timeseries.models import build_model
from nestedmemory.timeseries.synthetic import synthetic_anomaly, synthetic_ett
from nestedmemory.timeseries.train import TSTrainConfig, load_run, load_splits, train
from nestedmemory.timeseries.uea import find_uea

OUT = Path(__file__).resolve().parent.parent / "docs" / "timeseries.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/timeseries.py keeps everything after this line. -->"
#: every model's shared settings: width, depth, patches, optimiser (Adam, TSLib's type1 schedule), budget.
COMMON = dict(dim=32, layers=2, patch_len=16, stride=8, batch_size=32, lr=1e-3, lradj="type1", patience=3)
MIXING = {"chimera": {}, "hydra": {}, "tsm2": {}}
ABLATIONS = {"chimera (time only)": ("chimera", dict(axes=["time"], coupling=False, conv_axis="time",
                                                     bidirectional=False)),
             "chimera (coupling=False)": ("chimera", dict(coupling=False)),
             "chimera (one direction)": ("chimera", dict(bidirectional=False)),
             "chimera (not selective)": ("chimera", dict(selective=False)),
             "hydra (variate=none)": ("hydra", dict(variate="none"))}
ZOO = {"titans-lmm": {}, "mamba2": {}}
LIBRARY = {"dlinear": {}, "patchtst": {}, "itransformer": {}}
FORECAST = dict(rows=3000, lag=96, seq_len=96, pred_len=96, epochs=4, seeds=[0, 1])
QUICK_FORECAST = dict(FORECAST, rows=1200, epochs=1, max_steps=3)
#: per set: its data and patches, the training epochs (TSLib trains UEA sets up to 100 epochs, patience 10) and the
#: models (all five on the synthetic set, whose claim is the channel-mixing one). The lead/lag set trains at a
#: constant learning rate: a channel-mixing model leaves chance only after ≈ 6 epochs at 1e-3 there, and TSLib's
#: schedule (halved every 5 epochs) had stopped every model at chance within 10.
CLASSIFY = dict(sets={"lead/lag (synthetic)": dict(data="synthetic", synthetic_size=512, patch_len=8, stride=4,
                                                   epochs=30, lradj="constant"),
                      "JapaneseVowels": dict(data="JapaneseVowels", patch_len=4, stride=2, epochs=20),
                      "BasicMotions": dict(data="BasicMotions", patch_len=10, stride=5, epochs=60)},
                models=["chimera", "hydra", "tsm2", "titans-lmm", "mamba2"], uea_models=["chimera", "hydra",
                                                                                          "titans-lmm"],
                patience=10, seeds=[0])
QUICK_CLASSIFY = dict(CLASSIFY, sets={k: dict(v, synthetic_size=64, epochs=1) for k, v in CLASSIFY["sets"].items()
                                      if k.startswith("lead")}, models=["chimera", "titans-lmm"], max_steps=2)
ANOMALY = dict(sets={"ecg-diff-count-3": "ecg-diff-count-3", "synthetic": "synthetic"}, win_size=100,
               anomaly_ratio=1.0, models=["chimera", "hydra", "tsm2", "titans-lmm"], epochs=3, max_steps=200)
QUICK_ANOMALY = dict(ANOMALY, sets={"synthetic": "synthetic"}, models=["chimera"], epochs=1, max_steps=2)
#: Hydra: the step-time shapes, the 2-D tiles (time, variate) against the exact (1, 1), and the training steps of
#: the quality comparison (the forecasting table's budget: 4 epochs × 60 steps).
HYDRA = dict(shapes={"patches (L 96, patch 16/8: 12 tokens)": (12, 7), "raw steps (96 tokens)": (96, 7)},
             batch=32, repeats=3, tiles=[(4, 4), (8, 8)], steps=240)
QUICK_HYDRA = dict(HYDRA, shapes={"patches (L 96, patch 16/8: 12 tokens)": (12, 7)}, repeats=2, tiles=[(4, 4)],
                   steps=2)


def library_available() -> bool:
    return importlib.util.find_spec("neuralforecast") is not None


def run(name: str, folder: Path, **settings) -> dict:
    """``nestedmemory ts train`` of model ``name`` with ``settings`` into ``folder``; its results and timing."""
    start = time.perf_counter()
    out = train(TSTrainConfig(model=name, out=str(folder), progress=False, **settings))
    results = dict(out["results"], epochs=out["epoch"], steps=out["step"], best_epoch=out["best_epoch"],
                   seconds=time.perf_counter() - start)
    model = load_run(folder)[0]
    return dict(results, parameters=sum(p.numel() for p in model.parameters()))


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


# ---------------------------------------------------------------------------------------------- forecast
def section_forecast(quick: bool) -> dict:
    cfg = QUICK_FORECAST if quick else FORECAST
    models = {**{k: (k, v) for k, v in MIXING.items()}, **ABLATIONS, **{k: (k, v) for k, v in ZOO.items()}}
    if library_available():
        models.update({k: (k, v) for k, v in LIBRARY.items()})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "synthetic_ett.csv"
        synthetic_ett(cfg["rows"], "h", seed=0, lag=cfg["lag"]).to_csv(csv, index=False)
        for label, (name, options) in models.items():
            runs = [run(name, Path(tmp) / f"{label}-{seed}", data=str(csv), features="MS", seq_len=cfg["seq_len"],
                        label_len=cfg["seq_len"] // 2, pred_len=cfg["pred_len"], epochs=cfg["epochs"],
                        max_steps=cfg.get("max_steps"), seed=seed, options=options, **COMMON)
                    for seed in cfg["seeds"]]
            mse, mae = mean_std([r["mse"] for r in runs]), mean_std([r["mae"] for r in runs])
            rows.append(dict(model=label, kind=kind_of(name, options), mse=mse, mae=mae,
                             parameters=runs[0]["parameters"], seconds=statistics.fmean(r["seconds"] for r in runs),
                             epochs=[r["epochs"] for r in runs]))
            print(f"forecast {label}: MSE {mse[0]:.4f} ± {mse[1]:.4f}, MAE {mae[0]:.4f}", flush=True)
    return dict(config=dict(cfg, **COMMON, features="MS", target="OT"), library=library_available(), rows=rows)


def kind_of(name: str, options: dict) -> str:
    if name in LIBRARY:
        return "library baseline"
    if name in ZOO or options.get("variate") == "none" or options.get("axes") == ["time"]:
        return "channel-independent"
    return "ablation" if options else "channel-mixing"


# ---------------------------------------------------------------------------------------------- classify
def uea_available(name: str) -> bool:
    try:
        find_uea(name)
        return True
    except Exception:  # the data error says how to install; here the set is just skipped
        return False


def sklearn_classifiers(settings: dict) -> dict:
    """1-NN (Euclidean) and RidgeClassifierCV on the flattened, zero-padded, train-normalised series."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.neighbors import KNeighborsClassifier

    splits = load_splits(TSTrainConfig(task="classify", **settings), ("train", "test"))
    arrays = {flag: (torch.stack([splits[flag][i][0] for i in range(len(splits[flag]))]).flatten(1).numpy(),
                     np.array([int(splits[flag][i][1]) for i in range(len(splits[flag]))])) for flag in splits}
    out = {}
    for label, model in (("1-NN (sklearn)", KNeighborsClassifier(1)),
                         ("ridge (sklearn)", RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))):
        model.fit(*arrays["train"])
        out[label] = float((model.predict(arrays["test"][0]) == arrays["test"][1]).mean())
    return out


def section_classify(quick: bool) -> dict:
    cfg = QUICK_CLASSIFY if quick else CLASSIFY
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, settings in cfg["sets"].items():
            if settings["data"] != "synthetic" and not uea_available(settings["data"]):
                skipped.append(set_name)
                continue
            models = cfg["models"] if settings["data"] == "synthetic" else cfg["uea_models"]
            for name in models:
                runs = [run(name, Path(tmp) / f"{set_name}-{name}-{seed}", task="classify",
                            max_steps=cfg.get("max_steps"), seed=seed,
                            **{**COMMON, "patience": cfg["patience"], **settings}) for seed in cfg["seeds"]]
                accuracy = mean_std([r["accuracy"] for r in runs])
                rows.append(dict(set=set_name, model=name, accuracy=accuracy, parameters=runs[0]["parameters"],
                                 seconds=statistics.fmean(r["seconds"] for r in runs)))
                print(f"classify {set_name} {name}: {accuracy[0]:.3f}", flush=True)
            data = {k: v for k, v in settings.items() if k not in ("patch_len", "stride", "epochs", "lradj")}
            for label, accuracy in sklearn_classifiers(data).items():
                rows.append(dict(set=set_name, model=label, accuracy=(accuracy, 0.0), parameters=None, seconds=None))
    return dict(config=dict(cfg, **{**COMMON, "patience": cfg["patience"]}), rows=rows, skipped=skipped)


# ---------------------------------------------------------------------------------------------- anomaly
def isolation_forest(data: str, cfg: dict) -> dict:
    """IsolationForest (scikit-learn) on the train-normalised points, its score under the same threshold rule."""
    from sklearn.ensemble import IsolationForest

    train_rows, test_rows, labels = synthetic_anomaly() if data == "synthetic" else load_anomaly(data)
    mean, std = train_rows.mean(0), train_rows.std(0) + 1e-8
    forest = IsolationForest(random_state=0).fit((train_rows - mean) / std)
    energy = [-forest.score_samples((rows - mean) / std) for rows in (train_rows, test_rows)]
    return anomaly_scores(*energy, labels, cfg["anomaly_ratio"])


def section_anomaly(quick: bool) -> dict:
    cfg = QUICK_ANOMALY if quick else ANOMALY
    rows, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, data in cfg["sets"].items():
            try:
                load_anomaly(data) if data != "synthetic" else None
            except Exception:  # aeon's files are not installed: skip the set
                skipped.append(set_name)
                continue
            for name in cfg["models"]:
                result = run(name, Path(tmp) / f"{set_name}-{name}", task="anomaly", data=data,
                             win_size=cfg["win_size"], anomaly_ratio=cfg["anomaly_ratio"], epochs=cfg["epochs"],
                             max_steps=cfg.get("max_steps"), seed=0, **{**COMMON, "patch_len": 10, "stride": 10})
                rows.append(dict(set=set_name, model=name, f1=result["f1"], f1_pa=result["f1_pa"],
                                 precision=result["precision"], recall=result["recall"]))
                print(f"anomaly {set_name} {name}: F1 {result['f1']:.3f} (PA {result['f1_pa']:.3f})", flush=True)
            forest = isolation_forest(data, cfg)
            rows.append(dict(set=set_name, model="IsolationForest (sklearn)", f1=forest["f1"], f1_pa=forest["f1_pa"],
                             precision=forest["precision"], recall=forest["recall"]))
    return dict(config=dict(cfg, **{**COMMON, "patch_len": 10, "stride": 10}), rows=rows, skipped=skipped)


# ---------------------------------------------------------------------------------------------- hydra
def step_time(model, x, y) -> float:
    start = time.perf_counter()
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss), "non-finite loss"
    return time.perf_counter() - start


def section_hydra(quick: bool) -> dict:
    """Fwd + bwd time of one step, exact and every tile alternating (medians), then test MSE after training each the
    same number of steps."""
    cfg = QUICK_HYDRA if quick else HYDRA
    modes = {"exact": (1, 1), **{f"chunk-wise {tuple(t)}": tuple(t) for t in cfg["tiles"]}}
    speed = []
    for label, (tokens, variates) in cfg["shapes"].items():
        torch.manual_seed(0)
        patch = 16 if tokens < 96 else 1
        model = build_model("hydra", "forecast", seq_len=96, num_variates=variates, pred_len=96, dim=COMMON["dim"],
                            layers=COMMON["layers"], patch_len=patch, stride=8 if patch == 16 else 1)
        x, y = torch.randn(cfg["batch"], 96, variates), torch.randn(cfg["batch"], 96, variates)
        times = {mode: [] for mode in modes}
        for _ in range(cfg["repeats"]):
            for mode, chunks in modes.items():
                model.backbone.set_chunks(*chunks)
                times[mode].append(step_time(model, x, y))
        medians = {mode: statistics.median(t) for mode, t in times.items()}
        speed.append(dict(shape=label, tokens=tokens, variates=variates, seconds=medians,
                          ratio={mode: medians["exact"] / m for mode, m in medians.items() if mode != "exact"}))
        print(f"hydra {label}: " + ", ".join(f"{mode} {m:.3f} s" for mode, m in medians.items()), flush=True)
    quality = []
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "synthetic_ett.csv"
        synthetic_ett(QUICK_FORECAST["rows"] if quick else FORECAST["rows"], "h", seed=0,
                      lag=FORECAST["lag"]).to_csv(csv, index=False)
        for mode, chunks in modes.items():
            result = run("hydra", Path(tmp) / mode, data=str(csv), features="MS", seq_len=96, label_len=48,
                         pred_len=96, epochs=100, max_steps=cfg["steps"], seed=0,
                         options=dict(time_chunk=chunks[0], variate_chunk=chunks[1]), **COMMON)
            quality.append(dict(mode=mode, chunks=list(chunks), mse=result["mse"], mae=result["mae"],
                                seconds=result["seconds"], steps=result["steps"]))
            print(f"hydra {mode}: MSE {result['mse']:.4f} after {result['steps']} steps, {result['seconds']:.0f} s",
                  flush=True)
    return dict(config=dict(cfg, dim=COMMON["dim"], layers=COMMON["layers"]), speed=speed, quality=quality)


# ---------------------------------------------------------------------------------------------- report
def fmt(pair) -> str:
    mean, std = pair
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std else "")


def markdown(data: dict) -> str:
    lines = ["# Time series: Chimera, Hydra, TSM2 (issue 15)", "",
             "Written by `python benchmarks/timeseries.py` (TSLib protocol through `nestedmemory ts train`; one "
             "thread). **Synthetic** marks generated data.", ""]
    if "forecast" in data:
        f = data["forecast"]
        c = f["config"]
        lines += ["## Forecasting — synthetic cross-variate set (synthetic)", "",
                  f"{c['rows']} hourly rows, OT driven by the other variates {c['lag']} steps earlier; features MS, "
                  f"L = {c['seq_len']}, H = {c['pred_len']}; width {c['dim']}, {c['layers']} layers, patches "
                  f"{c['patch_len']}/{c['stride']}, Adam lr {c['lr']} ({c['lradj']}), batch {c['batch_size']}, "
                  f"≤ {c['epochs']} epochs, early stopping patience {c['patience']}, seeds {c['seeds']}. MSE / MAE "
                  f"of OT on the scaled test windows." + ("" if f["library"] else
                                                          " (neuralforecast not installed: no library rows.)"), "",
                  "| model | kind | MSE | MAE | parameters | train s |", "|---|---|---|---|---|---|"]
        for r in sorted(f["rows"], key=lambda r: r["mse"][0]):
            lines.append(f"| {r['model']} | {r['kind']} | {fmt(r['mse'])} | {fmt(r['mae'])} | {r['parameters']:,} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    if "classify" in data:
        c = data["classify"]
        epochs = ", ".join(f"{k} {v['epochs']}" + (f" ({v['lradj']} learning rate)" if "lradj" in v else "")
                           for k, v in c["config"]["sets"].items())
        lines += ["## Classification", "", f"Accuracy on the test split; epochs at most: {epochs}; 20 % of each "
                  f"class of the training file held out for validation (early stopping on its accuracy, patience "
                  f"{c['config']['patience']})."
                  + (f" Skipped (data not installed): {', '.join(c['skipped'])}." if c["skipped"] else ""), "",
                  "| set | model | accuracy | parameters |", "|---|---|---|---|"]
        for r in c["rows"]:
            params = f"{r['parameters']:,}" if r["parameters"] else "—"
            lines.append(f"| {r['set']} | {r['model']} | {fmt(r['accuracy'])} | {params} |")
        lines.append("")
    if "anomaly" in data:
        a = data["anomaly"]
        lines += ["## Anomaly detection", "", f"Reconstruction error of windows of {a['config']['win_size']} "
                  f"(patches 10/10, ≤ {a['config']['max_steps']} steps), threshold at the "
                  f"{100 - a['config']['anomaly_ratio']:g}th percentile of the train "
                  "and test scores; F1 without and with point adjustment (PA inflates, TSLib #430)."
                  + (f" Skipped (data not installed): {', '.join(a['skipped'])}." if a["skipped"] else ""), "",
                  "| set | model | F1 | F1 (PA) | precision | recall |", "|---|---|---|---|---|---|"]
        for r in a["rows"]:
            lines.append(f"| {r['set']} | {r['model']} | {r['f1']:.3f} | {r['f1_pa']:.3f} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} |")
        lines.append("")
    if "hydra" in data:
        h = data["hydra"]
        tiles = [m for m in h["speed"][0]["ratio"]]
        lines += ["## Hydra: 2-D chunk-wise training vs the exact 2-D recurrence", "",
                  f"One training step (fwd + bwd), batch {h['config']['batch']}, width {h['config']['dim']}, "
                  f"{h['config']['layers']} layers, tiles (time, variate) {', '.join(t[11:] for t in tiles)} vs the "
                  f"exact (1, 1); alternating, medians of {h['config']['repeats']}.", "",
                  "| input | tokens × variates | exact s | " + " | ".join(f"{t} s (speed-up)" for t in tiles) + " |",
                  "|---|---|---|" + "---|" * len(tiles)]
        for r in h["speed"]:
            lines.append(f"| {r['shape']} | {r['tokens']} × {r['variates']} | {r['seconds']['exact']:.3f} | "
                         + " | ".join(f"{r['seconds'][t]:.3f} ({r['ratio'][t]:.1f}×)" for t in tiles) + " |")
        lines += ["", f"Quality (synthetic forecasting set above, {h['config']['steps']} steps each):", "",
                  "| training | MSE | MAE | train s |", "|---|---|---|---|"]
        for r in h["quality"]:
            lines.append(f"| {r['mode']} | {r['mse']:.4f} | {r['mae']:.4f} | {r['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def write_markdown(path: Path, data: dict) -> None:
    write_keeping_notes(path, markdown(data), NOTES_MARK)


SECTIONS = {"forecast": section_forecast, "classify": section_classify, "anomaly": section_anomaly,
            "hydra": section_hydra}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", choices=list(SECTIONS), action="append")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section")
    parser.add_argument("--out", type=Path, default=OUT, help="the markdown file (the JSON beside it)")
    args = parser.parse_args(argv)
    configure_cpu()
    torch.set_num_threads(1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    data = json.loads(json_path.read_text()) if json_path.exists() else {}
    for name in args.section or list(SECTIONS):
        data[name] = SECTIONS[name](args.quick)
        json_path.write_text(json.dumps(data, indent=1))
        write_markdown(args.out, data)
    print(markdown(data))


if __name__ == "__main__":
    sys.exit(main())
