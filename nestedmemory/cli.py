"""The ``nestedmemory`` command. For now: ``info`` (the rules of the memory core) and ``check`` (verify, on
this machine, that the chunk-parallel path reproduces the literal token-by-token rule for every memory rule)."""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from .memory import MemoryRule, memorize
from .memory.rule import LEARNERS, MEMORIES, OBJECTIVES, RETENTIONS


def all_rules(chunk_size: int = 4):
    """Every valid combination of the core's four Miras choices (matrix and depth-2 MLP memories)."""
    for memory, objective, retention, learner in itertools.product(MEMORIES, OBJECTIVES, RETENTIONS, LEARNERS):
        if learner == "omega":
            continue
        try:
            yield MemoryRule(memory=memory, objective=objective, retention=retention, learner=learner,
                             chunk_size=chunk_size, shrink=0.01)
        except ValueError:
            continue


def gates_for(rule: MemoryRule, batch: int, length: int, heads: int, dtype=torch.float64, generator=None):
    """Random, stable gates for ``rule`` (lr ∈ (0, 0.05), decay ∈ (0, 0.2), momentum ∈ (0, 0.9))."""
    def u(lo, hi):
        return lo + (hi - lo) * torch.rand(batch, length, heads, dtype=dtype, generator=generator)
    kw = {"lr": u(0.0, 0.05)}
    if rule.retention != "none":
        kw["decay"] = u(0.0, 0.2)
    if rule.uses_momentum:
        kw["momentum"] = u(0.0, 0.9)
    if rule.objective == "huber":
        kw["threshold"] = u(0.5, 1.5)
    if rule.objective == "robust":
        kw["shift"] = u(0.1, 0.5)
    return kw


def check(args) -> int:
    torch.manual_seed(0)
    b, t, h, d = 2, 13, 2, 4
    worst = 0.0
    start = time.perf_counter()
    rules = list(all_rules(args.chunk_size))
    for rule in rules:
        q, k, v = (torch.nn.functional.normalize(torch.randn(b, t, h, d, dtype=torch.float64), dim=-1)
                   for _ in range(3))
        gates = gates_for(rule, b, t, h)
        state = rule.init_state(b, h, d, dtype=torch.float64)
        ref, ref_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, mode="recurrent",
                                  **gates)
        out, out_state = memorize(q, k, v, rule, initial_state=state, output_final_state=True, **gates)
        err = max([(ref - out).abs().max().item()] +
                  [(a - c).abs().max().item() for a, c in zip(ref_state.weights, out_state.weights)])
        worst = max(worst, err)
        if args.verbose:
            print(f"{rule.memory:6s} {rule.objective:6s} {rule.retention:7s} {rule.learner:8s} max|Δ| = {err:.1e}")
    ok = worst < 1e-9
    print(f"{len(rules)} rules, chunk size {args.chunk_size}, length {t}: chunked vs recurrent max |Δ| = "
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
