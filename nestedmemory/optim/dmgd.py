"""Deep Momentum Gradient Descent, DMGD: the momentum is an MLP trained online by its own inner objective (NL §4
Eq. 50; SPEC §6.2)."""

from __future__ import annotations

import math

import torch

from .common import ParamwiseOptimizer, as_matrix, fraction, nonnegative, positive_int


def features(u_hat: torch.Tensor, key_map: torch.Tensor) -> torch.Tensor:
    """The memory's hidden layer ``h = tanh(û A) / sqrt(hidden)`` for the gradient rows ``û``: every row has
    ``‖h_r‖ ≤ 1``."""
    return torch.tanh(u_hat @ key_map) / math.sqrt(key_map.shape[1])


class DeepMomentum(ParamwiseOptimizer):
    """DMGD (NL Eq. 50): ``W_{i+1} = W_i + m_{i+1}(u_i)``, ``m_{i+1} = α m_i − η ∇L⁽²⁾(m_i; ·)``, ``u_i = ∇L(W_i)``.

    The memory ``m`` of a parameter (matrix view ``[R, n]``; a vector is one row) is a residual two-layer MLP
    applied to the rows of the gradient::

        m(u) = M + h(u) B,    h(u) = tanh(û A) / sqrt(hidden),    û = u / RMS(u)

    with ``M [R, n]`` a per-position output bias, ``A [n, hidden]`` (``N(0, 1/n)`` from torch's global generator
    at the first step) and ``B [hidden, n]`` (zero at creation) shared by the rows; ``‖h_r‖ ≤ 1`` for every row.

    Inner objective: ``L⁽²⁾(m; u_{i−1}, u_i) = ⟨m(u_{i−1}), u_i⟩``, the first-order change of the outer loss
    caused by the memory's previous output (``W_i = W_{i−1} + m(u_{i−1})``), i.e. the hypergradient of the last
    step (Baydin et al., 2018); ``u_{−1} = 0``. One GD step on it per outer step, at the memory's current
    parameters: ``M`` with step ``η`` (``lr``), the shared ``A``, ``B`` with ``mlp_lr / R`` (the mean over the
    ``R`` rows, the memory's mini-batch); the retention ``α`` (``momentum``) decays ``M`` and ``B``, which store
    gradients, but not the key map ``A``, which would decay to zero features. Then the updated memory reads the
    current gradient (Eq. 50's ``m_{i+1}(u_i)``).

    Reductions and stability. ``M`` is input-independent, so its gradient is ``u_i`` and ``M ← α M − η u`` is
    exactly heavy-ball momentum, ``torch.optim.SGD(lr=η, momentum=α)`` (NL Eq. 33-34); with ``mlp_lr=0``
    (``B`` stays 0) the optimizer is that SGD. ``B ← α B − (mlp_lr/R) h(u_{j−1})ᵀ u_j`` makes the MLP part a
    linear-attention memory of gradient transitions (key: the previous gradient's features, value: the gradient
    that followed), read with the current gradient's features: ``h(u_i) B ≈ −(mlp_lr/R) Σ_j α^{i−j}
    h(u_i) h(u_{j−1})ᵀ u_j`` for a slowly moving ``A`` — it steps along the gradients that followed gradients like
    the current one, so directions that persist are accelerated and directions that flip (overshoot) are damped.
    (The same-step objective ``⟨m(u_i), u_i⟩`` instead only rewards large steps against the current gradient; on
    the toy it made oscillations worse.) Since ``‖h_r‖ ≤ 1``, ``‖B‖_F ≤ mlp_lr / (1 − α) · max_r ‖u_r‖`` and
    every row of the MLP's output obeys that bound, the one heavy-ball momentum obeys with ``mlp_lr`` for ``η``:
    a step is never longer than momentum's with learning rate ``lr + mlp_lr``.
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, mlp_lr: float = 3e-3, hidden: int = 16,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, mlp_lr=mlp_lr, hidden=hidden,
                                      weight_decay=weight_decay))

    @staticmethod
    def check(group: dict) -> None:
        fraction("momentum", group["momentum"])
        nonnegative("mlp_lr", group["mlp_lr"])
        positive_int("hidden", group["hidden"])

    def update(self, p: torch.Tensor, group: dict) -> None:
        state, u = self.state[p], as_matrix(p.grad)
        rows, cols = u.shape
        if not state:
            state.update(momentum_buffer=torch.zeros_like(p, memory_format=torch.contiguous_format),
                         key_map=torch.randn(cols, group["hidden"], dtype=p.dtype, device=p.device) / math.sqrt(cols),
                         value_map=torch.zeros(group["hidden"], cols, dtype=p.dtype, device=p.device))
        bias, key_map, value_map = as_matrix(state["momentum_buffer"]), state["key_map"], state["value_map"]
        u_hat = u / u.pow(2).mean().sqrt().clamp_min(torch.finfo(u.dtype).tiny)
        previous = state.get("previous", torch.zeros_like(u_hat))
        with torch.enable_grad():
            a, b = key_map.detach().requires_grad_(), value_map.detach().requires_grad_()
            inner = (features(previous, a) @ b * u).sum() / rows
            grad_a, grad_b = torch.autograd.grad(inner, (a, b))
        state["previous"] = u_hat
        alpha = group["momentum"]
        bias.mul_(alpha).add_(u, alpha=-group["lr"])
        value_map.mul_(alpha).add_(grad_b, alpha=-group["mlp_lr"])
        key_map.add_(grad_a, alpha=-group["mlp_lr"])
        p.add_((bias + features(u_hat, key_map) @ value_map).view_as(p))
