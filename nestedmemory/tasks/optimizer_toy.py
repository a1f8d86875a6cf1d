"""The Nested Learning paper's optimizer toy (NL §4, Fig. 4; SPEC §6.2): a narrow, winding valley

    ψ(r, θ) = r² + k (r − θ + a sin(ω r))²,    start (r, θ) = (−3.5, 2),

with k = 10, a = 1, ω = 2 (the paper gives no values): ψ = r² on the valley floor θ = r + sin(2r), whose
curvature is at most 2, while across the valley it is 2k ((1 + aω cos ωr)² + 1), up to 200; the floor winds, so
momentum overshoots across it. The only stationary point is the global minimum ψ(0, 0) = 0.

The point is one ``[1, 2]`` parameter, a 1×2 matrix: Muon and M3 orthogonalise it (Newton–Schulz of a row is
its direction, so Muon is normalised-gradient descent with momentum here) instead of falling back to AdamW,
which would make Muon Adam.

``python -m nestedmemory.tasks.optimizer_toy --out docs/optimizer_toy.png`` tunes each optimizer's learning rate
on a grid, prints the table (steps to ψ < threshold, final ψ) and plots the trajectories on the contours of ψ.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch

from ..optim import M3, DeepMomentum, DeltaMomentum, Muon

K, A, OMEGA = 10.0, 1.0, 2.0
START = (-3.5, 2.0)
STEPS = 500
THRESHOLD = 1e-3
#: The learning-rate grid every optimizer is tuned on: 10^(−3) … 10^(0.5), four points per decade.
LR_GRID = tuple(10 ** (e / 4) for e in range(-12, 3))

#: name → factory ``(params, lr) → optimizer``; momentum factors at their usual defaults.
OPTIMIZERS: dict[str, Callable] = {
    "SGD": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "Adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "Muon": lambda params, lr: Muon(params, lr=lr),
    "M3": lambda params, lr: M3(params, lr=lr),
    "DeltaMomentum": lambda params, lr: DeltaMomentum(params, lr=lr, momentum=0.9),
    "DeepMomentum": lambda params, lr: DeepMomentum(params, lr=lr, momentum=0.9, mlp_lr=0.3 * lr),
}
#: momentum and its Nested Learning variants, for the learning-rate sweep (Fig. 4 compares these).
VARIANTS: dict[str, Callable] = {
    "momentum": OPTIMIZERS["momentum"],
    "DeltaMomentum β=1": OPTIMIZERS["DeltaMomentum"],
    "DeltaMomentum β=0.1": lambda params, lr: DeltaMomentum(params, lr=lr, momentum=0.9, inner_lr=0.1),
    "DeepMomentum mlp_lr=0.3 lr": OPTIMIZERS["DeepMomentum"],
    "DeepMomentum mlp_lr=lr": lambda params, lr: DeepMomentum(params, lr=lr, momentum=0.9, mlp_lr=lr),
}


def psi(point: torch.Tensor) -> torch.Tensor:
    """ψ at ``point[..., 0] = r``, ``point[..., 1] = θ``."""
    r, theta = point[..., 0], point[..., 1]
    return r**2 + K * (r - theta + A * torch.sin(OMEGA * r)) ** 2


def run(make_optimizer: Callable, steps: int = STEPS, start: tuple[float, float] = START):
    """Minimise ψ from ``start`` for ``steps`` steps with ``make_optimizer([point])``. Returns the trajectory
    ``[steps + 1, 2]`` and the losses ``[steps + 1]`` (a diverged run keeps its non-finite values)."""
    point = torch.nn.Parameter(torch.tensor([start], dtype=torch.float64))
    optimizer = make_optimizer([point])
    trajectory = [point.detach().clone()]
    with torch.random.fork_rng():
        torch.manual_seed(0)  # DeepMomentum's memory is randomly initialised (at its first step)
        for _ in range(steps):
            optimizer.zero_grad()
            psi(point).sum().backward()
            optimizer.step()
            trajectory.append(point.detach().clone())
    trajectory = torch.cat(trajectory)
    return trajectory, psi(trajectory)


def steps_to(losses: torch.Tensor, threshold: float = THRESHOLD) -> int | None:
    """The first step at which the loss is below ``threshold`` (``None`` if never)."""
    below = (losses < threshold).nonzero()
    return int(below[0]) if len(below) else None


def tune(make_optimizer: Callable, steps: int = STEPS, threshold: float = THRESHOLD):
    """The grid learning rate reaching ``threshold`` first (ties, or none reaching it: the lowest final loss).
    Returns ``(lr, trajectory, losses)``."""
    def score(lr):
        trajectory, losses = run(partial(make_optimizer, lr=lr), steps)
        reached = steps_to(losses, threshold)
        final = float(losses[-1]) if torch.isfinite(losses[-1]) else float("inf")
        return (reached if reached is not None else steps + 1, final), lr, trajectory, losses

    return min((score(lr) for lr in LR_GRID), key=lambda s: s[0])[1:]


def compare(steps: int = STEPS, threshold: float = THRESHOLD) -> dict[str, tuple]:
    """Every optimizer of :data:`OPTIMIZERS` at its tuned learning rate: name → ``(lr, trajectory, losses)``."""
    return {name: tune(make, steps, threshold) for name, make in OPTIMIZERS.items()}


def table(results: dict[str, tuple], threshold: float = THRESHOLD) -> str:
    """A Markdown table: optimizer, tuned lr, steps to ψ < threshold, final ψ."""
    lines = [f"| optimizer | lr | steps to ψ < {threshold:g} | final ψ |", "|---|---|---|---|"]
    for name, (lr, _, losses) in results.items():
        reached = steps_to(losses, threshold)
        lines.append(f"| {name} | {lr:.3g} | {'—' if reached is None else reached} | {float(losses[-1]):.3g} |")
    return "\n".join(lines)


def lr_sweep(optimizers: dict[str, Callable], steps: int = STEPS, threshold: float = THRESHOLD) -> str:
    """A Markdown table of steps to ψ < threshold of every optimizer of ``optimizers`` at every grid learning
    rate."""
    lines = ["| lr | " + " | ".join(optimizers) + " |", "|---" * (len(optimizers) + 1) + "|"]
    for lr in LR_GRID:
        cells = [steps_to(run(partial(make, lr=lr), steps)[1], threshold) for make in optimizers.values()]
        lines.append(f"| {lr:.3g} | " + " | ".join("—" if c is None else str(c) for c in cells) + " |")
    return "\n".join(lines)


def plot(results: dict[str, tuple], path: str) -> None:
    """Trajectories on the log-contours of ψ, and the loss curves, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, curves) = plt.subplots(1, 2, figsize=(13, 5.5))
    points = torch.cat([trajectory for _, trajectory, _ in results.values()]).nan_to_num().clamp(-8, 8)
    (r_lo, theta_lo), (r_hi, theta_hi) = (points.min(0).values - 0.5).tolist(), (points.max(0).values + 0.5).tolist()
    r, theta = torch.meshgrid(torch.linspace(r_lo, r_hi, 300), torch.linspace(theta_lo, theta_hi, 300),
                              indexing="xy")
    grid = psi(torch.stack([r, theta], -1))
    ax.contourf(r, theta, grid.log10(), levels=30, cmap="Greys")
    for name, (lr, trajectory, losses) in results.items():
        ax.plot(trajectory[:, 0], trajectory[:, 1], lw=1, label=name)
        curves.semilogy(losses.clamp_min(1e-12), lw=1, label=f"{name} (lr {lr:.3g})")
    ax.plot(*START, "k*", ms=10)
    ax.plot(0, 0, "r*", ms=10)
    ax.set(xlim=(r_lo, r_hi), ylim=(theta_lo, theta_hi), xlabel="r", ylabel="θ",
           title=f"ψ = r² + {K:g}(r − θ + {A:g} sin({OMEGA:g}r))²")
    ax.legend(fontsize=8)
    curves.set(xlabel="step", ylabel="ψ", title="loss (each optimizer at its tuned lr)")
    curves.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the trajectory plot to this PNG")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    args = parser.parse_args(argv)
    results = compare(args.steps, args.threshold)
    print(table(results, args.threshold))
    print()
    print(lr_sweep(VARIANTS, args.steps, args.threshold))
    if args.out:
        plot(results, args.out)


if __name__ == "__main__":
    main()
