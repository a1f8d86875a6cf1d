"""Formal-language recognition (Hope's Table 5, in the setup of Irie et al. 2023): in-repo generators, not the
released data files.

Irie et al. report Bin0 / Bin1 accuracy on these six languages, the languages, bins and metric of Bhattamishra et al.
2020. The format below is Bhattamishra et al.'s, read in their public ``Transformer-Formal-Languages`` code; that
Irie et al. reuse it unchanged is our reading, not confirmed from their text. The model reads a string of the
language one character at a time and, after every prefix, outputs what its recogniser must know —

- for the non-star-free regular languages ``parity`` (binary strings with an even number of 1s), ``aa_star``
  ((aa)*) and ``abab_star`` ((abab)*): whether the prefix is in the language (2 classes);
- for the counter languages ``anbn`` (aⁿbⁿ), ``anbncn`` (aⁿbⁿcⁿ) and ``shuffle2`` (Shuffle-2, the interleavings of
  two Dyck-1 words over ``()`` and ``[]``): the set of characters that may come next, end of string included.

Bhattamishra et al. output the next-character set as a multi-hot vector through sigmoids; a causal LM has one
softmax, so each distinct set is one output token (aⁿbⁿ: {a,b}, {b}, {end}; aⁿbⁿcⁿ: {a,b}, {b}, {c}, {end};
Shuffle-2: which of ``)`` and ``]`` may close — the openers are always allowed and the end exactly when neither
may close). A string counts as recognised only if the output after every prefix is right (their metric). Layout:
``input_ids[:, :L]`` is the string, ``labels[:, t]`` the output after the prefix of length ``t`` (read at
position ``t − 1``), padding after the string.

Bins by string length: ``Bin0`` = the training lengths 1–50, ``Bin1`` = the longer lengths 51–100 (their bins of
width 50). Lengths a language cannot have are skipped ((aa)*, aⁿbⁿ, Shuffle-2: even; (abab)*: multiples of 4;
aⁿbⁿcⁿ: multiples of 3); the length is uniform inside the bin (their generators draw it from a p/q stopping law).
Shuffle-2 strings are uniform interleavings of two uniform random Dyck-1 words (their generator samples a Dyck-2
grammar, a subset of Shuffle-2).

``python -m nestedmemory.tasks.formal --presets transformer++ gated-deltanet --out docs/formal_languages.md``
trains a tiny model per (preset, language) on Bin0 and writes the Bin0 / Bin1 accuracy table (Markdown + JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..models import count_parameters, from_preset
from .common import IGNORE, batch, check_choice, check_int, evaluate_data, rng_for
from .report import markdown_table, percent, write_report
from .training import train_on_task

BINS = ((1, 50), (51, 100))
VOCAB_SIZE = 16  # padding 0, alphabet 1–4, outputs 5–8
_FIRST_OUTPUT = 5


@dataclass(frozen=True)
class Language:
    name: str  # as in the papers' tables
    alphabet: str
    outputs: tuple[str, ...]  # the output classes
    step: int  # string lengths are multiples of it
    sample: Callable[[np.random.Generator, int], str]  # a member string of the given length
    targets: Callable[[str], list[int]]  # the output class after every prefix of the string


def _parity_string(rng, length):
    bits = rng.integers(0, 2, size=length)
    bits[-1] = bits[:-1].sum() % 2  # an even number of 1s
    return "".join(map(str, bits))


def _dyck(rng, pairs: int, open_: str, close: str) -> str:
    """A uniform random Dyck-1 word with ``pairs`` pairs (cycle lemma: the one rotation of a random arrangement
    of pairs + 1 openers and ``pairs`` closers whose partial sums stay positive, minus its first opener)."""
    steps = rng.permutation(np.array([1] * (pairs + 1) + [-1] * pairs))
    heights = np.concatenate([[0], np.cumsum(steps)[:-1]])
    start = len(heights) - 1 - int(np.argmin(heights[::-1]))  # the last minimum
    return "".join(open_ if s > 0 else close for s in np.roll(steps, -start)[1:])


def _shuffle2_string(rng, length):
    pairs = length // 2
    first = int(rng.integers(pairs + 1))
    words = [iter(_dyck(rng, first, "(", ")")), iter(_dyck(rng, pairs - first, "[", "]"))]
    order = rng.permutation(np.array([0] * (2 * first) + [1] * (length - 2 * first)))
    return "".join(next(words[k]) for k in order)


def _shuffle2_targets(string):
    depth, out = {"(": 0, "[": 0}, []
    for char in string:
        opener = {")": "(", "]": "["}.get(char, char)
        depth[opener] += 1 if char == opener else -1
        out.append((depth["("] > 0) + 2 * (depth["["] > 0))
    return out


def _counter_targets(string):
    """aⁿbⁿ…: after aᵏ (k ≤ n) a or b may follow; ``j`` letters past the a-block, the next letter is number
    ``1 + j // n`` of the alphabet (b, c, …), or the end after the last block."""
    n = len(string) // len(set(string))
    return [0 if i <= n else 1 + (i - n) // n for i in range(1, len(string) + 1)]


LANGUAGES = {
    "parity": Language("Parity", "01", ("out", "in"), 1, _parity_string,
                       lambda s: [int(s[:i].count("1") % 2 == 0) for i in range(1, len(s) + 1)]),
    "aa_star": Language("(aa)*", "a", ("out", "in"), 2, lambda rng, n: "a" * n,
                        lambda s: [int(i % 2 == 0) for i in range(1, len(s) + 1)]),
    "abab_star": Language("(abab)*", "ab", ("out", "in"), 4, lambda rng, n: "ab" * (n // 2),
                          lambda s: [int(i % 4 == 0) for i in range(1, len(s) + 1)]),
    "anbn": Language("aⁿbⁿ", "ab", ("{a,b}", "{b}", "{end}"), 2, lambda rng, n: "a" * (n // 2) + "b" * (n // 2),
                     _counter_targets),
    "anbncn": Language("aⁿbⁿcⁿ", "abc", ("{a,b}", "{b}", "{c}", "{end}"), 3,
                       lambda rng, n: "a" * (n // 3) + "b" * (n // 3) + "c" * (n // 3), _counter_targets),
    "shuffle2": Language("Shuffle-2", "()[]", ("{(,[,end}", "{(,[,)}", "{(,[,]}", "{(,[,),]}"), 2,
                         _shuffle2_string, _shuffle2_targets),
}


def _lengths(language: Language, low: int, high: int) -> np.ndarray:
    lengths = np.arange(max(low, language.step), high + 1)
    lengths = lengths[lengths % language.step == 0]
    if not len(lengths):
        raise ValueError(f"bins: ({low}, {high}) holds no length of {language.name} (multiples of {language.step})")
    return lengths


def generate(n: int, *, seed: int, vocab_size: int = VOCAB_SIZE, seq_len: int | None = None,
             language: str = "parity", bins=BINS[:1]) -> dict:
    """``n`` strings of ``language``, example ``i`` from bin ``i % len(bins)`` (``bins``: (shortest, longest)
    lengths; the default is Bin0, the training bin). ``seq_len`` defaults to the longest length + 1. Metadata:
    ``bin`` (index into ``bins``), ``length``."""
    spec = LANGUAGES[check_choice("language", language, LANGUAGES)]
    n = check_int("n", n)
    if not bins or any(len(b) != 2 or check_int("bins", b[0]) > check_int("bins", b[1]) for b in bins):
        raise ValueError(f"bins must be a non-empty sequence of (shortest, longest) length pairs, got {bins!r}")
    choices = [_lengths(spec, low, high) for low, high in bins]
    longest = max(int(c[-1]) for c in choices)
    seq_len = longest + 1 if seq_len is None else check_int("seq_len", seq_len)
    if seq_len < longest + 1:
        raise ValueError(f"seq_len={seq_len} is too short: strings of length {longest} need {longest + 1}")
    rng = rng_for(seed)
    input_ids = np.zeros((n, seq_len), dtype=np.int64)
    labels = np.full((n, seq_len), IGNORE, dtype=np.int64)
    bin_of, length_of = np.arange(n) % len(bins), np.empty(n, dtype=np.int64)
    for i in range(n):
        length = int(rng.choice(choices[bin_of[i]]))
        string = spec.sample(rng, length)
        input_ids[i, :length] = [1 + spec.alphabet.index(c) for c in string]
        labels[i, 1:length + 1] = _FIRST_OUTPUT + np.asarray(spec.targets(string))
        length_of[i] = length
    return batch(input_ids, labels, check_int("vocab_size", vocab_size), bin=bin_of, length=length_of)


def evaluate(model, *, n: int, seed: int, batch_size: int, language: str = "parity", bins=BINS, **options) -> dict:
    """String accuracy (every prefix's output right) over ``n`` strings spread over ``bins``: overall, per
    ``bin`` (``"0"`` = Bin0, ``"1"`` = Bin1), plus the per-prefix ``token_accuracy``."""
    data = generate(n, seed=seed, language=language, bins=bins, **options)
    return evaluate_data(model, data, batch_size=batch_size, exact=True, groups=("bin",))


# ---------------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------------

def run(presets, *, languages=tuple(LANGUAGES), steps: int = 1000, batch_size: int = 32, lr: float = 3e-3,
        eval_n: int = 256, seed: int = 0, size: str = "tiny", **overrides) -> list[dict]:
    """Train a fresh ``size`` model of every preset on every language (Bin0 strings, :func:`train_on_task`) and
    evaluate it on Bin0 and Bin1; one record per (preset, language)."""
    this = sys.modules[__name__]
    records = []
    for preset in presets:
        for language in languages:
            torch.manual_seed(seed)
            model = from_preset(preset, size=size, **{"vocab_size": VOCAB_SIZE, **overrides})
            start = time.perf_counter()
            losses = train_on_task(model, this, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                   language=language, bins=BINS[:1])
            result = evaluate(model, n=eval_n, seed=seed + 1_000_003, batch_size=batch_size, language=language)
            records.append(dict(preset=preset, language=language, bin0=result["bin"]["0"], bin1=result["bin"]["1"],
                                token_accuracy=result["token_accuracy"], final_loss=float(np.mean(losses[-20:])),
                                parameters=count_parameters(model.config),
                                seconds=round(time.perf_counter() - start, 1), steps=steps, lr=lr,
                                batch_size=batch_size, overrides=overrides))
            print(f"{preset:>16} {language:>10}  Bin0 {records[-1]['bin0']:.3f}  Bin1 {records[-1]['bin1']:.3f}  "
                  f"loss {records[-1]['final_loss']:.4f}  {records[-1]['seconds']} s", flush=True)
    return records


#: Hope's Table 5 (Bin0 / Bin1, %; "100" where SPEC §6.8 gives one number for both bins), for reference.
PAPER_ROWS = {
    "Transformer": "46.4 / 0.0 | 0.0 / 0.0 | 0.0 / 0.0 | 100 | 100 | 100",
    "Linear attention": "78.1 / 0.0 | 0.0 / 0.0 | 0.0 / 0.0 | 100 | 100 | 100",
    "DeltaNet": "98.2 / 10.1 | 0.0 / 0.0 | 0.0 / 0.0 | 100 | 100 | 100",
    "Hope": "100 | 100 | 100 | 100 | 100 | 100",
}


def _exceptions(records: list[dict], settings: dict) -> str:
    """A note per preset whose records were trained otherwise than ``settings`` (steps, lr, batch size, model
    overrides; records without these keys follow ``settings``)."""
    notes = {}
    for r in records:
        differ = [f"{key.replace('_', ' ')} {r[key]}" for key in ("steps", "lr", "batch_size")
                  if key in r and r[key] != settings[key]]
        if r.get("overrides"):
            differ.append(f"model overrides `{json.dumps(r['overrides'])}`")
        if differ:
            notes.setdefault(r["preset"], differ)
    diverged = {}
    for r in records:
        if not np.isfinite(r["final_loss"]):
            diverged.setdefault(r["preset"], []).append(LANGUAGES[r["language"]].name)
    return ("".join(f" Row {preset}: {', '.join(differ)}." for preset, differ in notes.items())
            + "".join(f" {preset} diverged (NaN loss) on {', '.join(names)}: those cells are 0 by failure."
                      for preset, names in diverged.items()))


def write_table(records: list[dict], settings: dict, out) -> None:
    """The Markdown table of :func:`run`'s ``records`` at ``out`` and the records and ``settings`` as JSON."""
    presets = list(dict.fromkeys(r["preset"] for r in records))
    languages = list(dict.fromkeys(r["language"] for r in records))
    cells = {(r["preset"], r["language"]): f"{percent(r['bin0'])} / {percent(r['bin1'])}" for r in records}
    parameters = {r["preset"]: r["parameters"] for r in records}
    header = ["Model", "parameters"] + [LANGUAGES[language].name for language in languages]
    rows = [[preset, f"{parameters[preset]:,}"] + [cells[preset, language] for language in languages]
            for preset in presets]
    reference = ""
    if languages == list(LANGUAGES):
        reference = ("\n\nFor reference, Hope's Table 5 (Irie et al.'s setup and models, not these tiny ones):\n\n"
                     + markdown_table(["Model"] + header[2:], [[m] + v.split(" | ") for m, v in PAPER_ROWS.items()]))
    notes = (f"Bin0 / Bin1 string accuracy (%) — Bin0: lengths {BINS[0][0]}–{BINS[0][1]} (the training lengths), "
             f"Bin1: {BINS[1][0]}–{BINS[1][1]}; {settings['eval_n'] // 2} test strings per bin. A string counts only "
             f"if the output after every prefix is right. Each cell is one `{settings['size']}` model trained from "
             f"scratch for {settings['steps']} AdamW steps of {settings['batch_size']} fresh Bin0 strings (lr "
             f"{settings['lr']}, seed {settings['seed']}) on the CPU. Task format and generators: "
             f"`nestedmemory/tasks/formal.py`; command: `python -m nestedmemory.tasks.formal --presets "
             f"{' '.join(presets)} --out {out}`." + _exceptions(records, settings) + reference)
    write_report(out, title="Formal languages (Irie et al. 2023 setup, tiny CPU models)", header=header, rows=rows,
                 notes=notes, data=dict(settings=settings, bins=BINS, results=records))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nestedmemory.tasks.formal", description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", required=True)
    parser.add_argument("--languages", nargs="+", default=list(LANGUAGES), choices=list(LANGUAGES))
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-n", type=int, default=256, help="test strings, half per bin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default="docs/formal_languages.md")
    parser.add_argument("--model-overrides", type=json.loads, default={},
                        help='JSON dict of model config overrides, e.g. \'{"cms": null}\'')
    parser.add_argument("--append", action="store_true",
                        help="keep the records already in the JSON next to --out (other presets) and add these")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, eval_n=args.eval_n, seed=args.seed,
                    size=args.size)
    records = run(args.presets, languages=args.languages, **settings, **args.model_overrides)
    if args.append:
        from pathlib import Path
        previous = json.loads(Path(args.out).with_suffix(".json").read_text())
        settings = previous["settings"]  # the table's protocol; rows trained otherwise get a note
        records = [r for r in previous["results"] if r["preset"] not in args.presets] + records
    write_table(records, settings, args.out)


if __name__ == "__main__":
    main()
