"""The ``nestedmemory`` command. For now: ``info`` (the rules of the memory core) and ``check`` (verify, on
this machine, that the chunk-parallel path reproduces the literal token-by-token rule for every memory rule)."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .memory import memorize
from .memory.catalog import all_rules, random_inputs
from .memory.rule import LEARNERS, MEMORIES, OBJECTIVES, RETENTIONS


def relative_error(reference, other) -> float:
    """``max|a − b| / max|a|`` (the scale-free error the exactness checks use)."""
    return ((reference - other).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def check(args) -> int:
    torch.manual_seed(0)
    b, t, h, d = 2, 13, 2, 4
    worst = 0.0
    start = time.perf_counter()
    rules = list(all_rules(args.chunk_size))
    for rule in rules:
        q, k, v, gates = random_inputs(rule, b, t, h, d)
        state = rule.init_state(b, h, d, dtype=torch.float64)
        ref, ref_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode="recurrent",
                                  **gates)
        out, out_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)
        err = max(relative_error(a, c) for a, c in zip([ref, *ref_state.weights], [out, *out_state.weights]))
        worst = max(worst, err)
        if args.verbose:
            print(f"{rule.memory:6s} {rule.objective:6s} {rule.retention:7s} {rule.learner:8s} rel. error {err:.1e}")
    ok = worst < 1e-9
    print(f"{len(rules)} rules, chunk size {args.chunk_size}, length {t}: chunked vs recurrent rel. error "
          f"{worst:.1e} (fp64) in {time.perf_counter() - start:.1f}s — {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def info(_args) -> int:
    print("nestedmemory memory core — choices of MemoryRule:")
    for name, options in (("memory", MEMORIES), ("objective", OBJECTIVES), ("retention", RETENTIONS),
                          ("learner", LEARNERS)):
        print(f"  {name:10s} {', '.join(options)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nestedmemory", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_check = sub.add_parser("check", help="chunked == recurrent for every memory rule (fp64)")
    p_check.add_argument("--chunk-size", type=int, default=4)
    p_check.add_argument("-v", "--verbose", action="store_true")
    p_check.set_defaults(func=check)
    sub.add_parser("info", help="list the memory rules").set_defaults(func=info)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["check"])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
