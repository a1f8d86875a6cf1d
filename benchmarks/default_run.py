"""The default run, end to end (issue 13, target 4): ``nestedmemory train`` with no arguments, and beside it
``transformer++`` trained by the same command at the same wall-clock budget and parameter count.

Each run is the command a user types, in a fresh process (``python -m nestedmemory train --out <folder>``, its
progress bar on, as the README's first command), measured from the outside: wall clock from start to exit, peak
resident memory of the process (``os.wait4``'s ``ru_maxrss``: the high-water mark of the run, model, data,
validation and sample included), and the validation loss (nats per byte) of its last evaluation, read from the run
folder's ``metrics.jsonl``.

The comparison (NL's claim: Hope / the Titans family beat Transformer++ at equal parameters): ``transformer++``'s
SwiGLU width is solved so that its parameter count matches the default model's (``presets.matched_intermediate``),
and its ``--max_steps`` so that its whole run takes the default run's wall clock: a probe run of ``PROBE_STEPS``
gives its seconds per step (from the tokens/s it logs) and its fixed cost (start, validation, sample), the steps
are what the default run's wall clock leaves after that fixed cost, and where the run misses that wall clock by
more than ``WALL_TOLERANCE`` (its periodic validations, which the probe does not see) the steps are scaled once and
the run repeated. ``--extra PRESET`` adds other presets trained by the same command with the default settings
(e.g. ``hope``, the earlier default).

Run it on an idle machine (the runs take both cores): ``python benchmarks/default_run.py`` (about 10 minutes).
Writes ``docs/default_run.md`` and its JSON twin (``--out``); hand-written notes below ``NOTES_MARK`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_core as mc  # noqa: E402

from nestedmemory.models import count_parameters  # noqa: E402
from nestedmemory.models.presets import matched_intermediate  # noqa: E402
from nestedmemory.tasks.report import markdown_table, write_keeping_notes_with_json  # noqa: E402
from nestedmemory.train import DEFAULT_PRESET, DEFAULT_SIZE  # noqa: E402
from nestedmemory.train.config import ModelConfig, model_config  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "default_run.md"
NOTES_MARK = "<!-- Hand-written notes below: benchmarks/default_run.py keeps everything after this line. -->"
BASELINE = "transformer++"
PROBE_STEPS = 40
#: the baseline's wall clock is re-aimed once when it misses the default run's by more than this fraction
WALL_TOLERANCE = 0.04
BYTE_VOCAB = 256


def train(folder: Path, *flags: str) -> dict:
    """Run ``nestedmemory train --out folder *flags`` in a fresh process: wall seconds, peak RSS (MB), the last
    validation loss and the steps' mean seconds (from the last logged tokens/s)."""
    cmd = [sys.executable, "-m", "nestedmemory", "train", "--out", str(folder), *flags]
    start = time.perf_counter()
    with open(folder.parent / f"{folder.name}.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {folder.parent / f'{folder.name}.log'}")
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "tokens_per_s" in r]
    val = [r for r in records if "val_loss" in r]
    last = logged[-1]
    return dict(command=shlex.join(["nestedmemory", "train", *flags]), wall_s=wall, peak_mb=usage.ru_maxrss / 1024,
                val_loss=val[-1]["val_loss"], steps=last["step"],
                step_s=last["tokens"] / last["step"] / last["tokens_per_s"])


def config_of(preset: str, overrides: dict | None = None):
    """The model ``nestedmemory train --model.preset preset`` builds on the byte tokenizer, at the default size."""
    return model_config(ModelConfig(preset=preset, size=DEFAULT_SIZE, overrides=overrides or {}), BYTE_VOCAB)


def parameters(preset: str, overrides: dict | None = None) -> int:
    return count_parameters(config_of(preset, overrides))


def baseline_flags(target: int) -> tuple[list[str], int]:
    """``transformer++``'s flags with the SwiGLU width that matches ``target`` parameters, and its count."""
    overrides = {"intermediate_size": matched_intermediate(
        target, lambda n: config_of(BASELINE, {"intermediate_size": n}))}
    return ["--model.preset", BASELINE, "--model.overrides", json.dumps(overrides)], parameters(BASELINE, overrides)


def run(extra: list[str], work: Path) -> dict:
    setup = mc.setup_torch()
    target = parameters(DEFAULT_PRESET)
    default = train(work / "default")
    rows = {f"{DEFAULT_PRESET} (default)": dict(default, preset=DEFAULT_PRESET, parameters=target)}
    flags, count = baseline_flags(target)
    probe = train(work / "probe", *flags, "--max_steps", str(PROBE_STEPS), "--eval_every", "0")
    fixed = max(0.0, probe["wall_s"] - PROBE_STEPS * probe["step_s"])
    steps = max(PROBE_STEPS, round((default["wall_s"] - fixed) / probe["step_s"]))
    matched = train(work / "baseline", *flags, "--max_steps", str(steps))
    if abs(matched["wall_s"] / default["wall_s"] - 1) > WALL_TOLERANCE:  # the validations the probe did not see
        steps = max(PROBE_STEPS, round(steps * (default["wall_s"] - fixed) / (matched["wall_s"] - fixed)))
        matched = train(work / "baseline_again", *flags, "--max_steps", str(steps))
    rows[f"{BASELINE} (same wall clock)"] = dict(matched, preset=BASELINE, parameters=count)
    equal_steps = train(work / "baseline_steps", *flags)
    rows[f"{BASELINE} (same steps)"] = dict(equal_steps, preset=BASELINE, parameters=count)
    for preset in extra:
        rows[preset] = dict(train(work / preset, "--model.preset", preset), preset=preset,
                            parameters=parameters(preset))
    return dict(machine=mc.machine_info(setup), load=mc.cpu_load(), source=mc.source_info(),
                date=time.strftime("%Y-%m-%d"), rows=rows)


def markdown(data: dict) -> str:
    m = data["machine"]
    header = ["run", "command", "parameters", "steps", "wall", "peak RSS (MB)", "val loss (nats/byte)"]
    rows = [[name, f"`{r['command']}`", f"{r['parameters'] / 1e6:.2f}M", r["steps"],
             f"{int(r['wall_s'] // 60)}:{r['wall_s'] % 60:04.1f}", f"{r['peak_mb']:,.0f}", f"{r['val_loss']:.3f}"]
            for name, r in data["rows"].items()]
    return "\n".join([
        "# The default run against transformer++",
        "",
        f"Generated by `python benchmarks/default_run.py` (the script's docstring gives the protocol), "
        f"{data['date']}: {m['cpu_model']}, {m['logical_cpus']} logical CPUs, torch {m['torch']}, load "
        f"{data['load']['loadavg_1m']:.2f} at the end, code {data['source']['repo_head']}. Wall clock end to end "
        "(start, training, validation every 100 steps, sample, checkpoints); peak RSS of the whole run.",
        "",
        markdown_table(header, rows),
        "",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", nargs="*", default=[], metavar="PRESET",
                        help="other presets trained by the same command with the default settings")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        data = run(args.extra, Path(work))
    text = markdown(data)
    print(text)
    write_keeping_notes_with_json(args.out, text, data, NOTES_MARK)


if __name__ == "__main__":
    main()
