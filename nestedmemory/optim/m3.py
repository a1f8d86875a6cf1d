"""M3, Multi-scale Momentum Muon (NL §7.2, Algorithm 1; SPEC §6.4)."""

from __future__ import annotations

import torch

from .common import (ParamwiseOptimizer, betas, muon_switch, nonnegative, orthogonalise, positive, positive_int,
                     require, uses_muon)

MOMENTUM_MODES = ("ema", "accumulate")


class M3(ParamwiseOptimizer):
    """Multi-scale Momentum Muon (NL Algorithm 1): Adam whose momentum is a two-level continuum memory (CMS, NL
    Eq. 71) — a fast momentum ``M1`` updated every step and a slow momentum ``M2`` updated every ``frequency``
    steps with the gradients of the last chunk — each orthogonalised by Newton–Schulz as in Muon::

        M1 ← β1 M1 + (1 − β1) g,  V ← β2 V + (1 − β2) g²                       (every step)
        M2 ← β3 M2 + (1 − β3) mean(g over the last f steps)                     (every f steps)
        O_j = NS_k(M̂_j) · ‖M̂_j‖_F / ‖NS_k(M̂_j)‖_F                            (j = 1, 2)
        W ← (1 − η λ) W − η (O1 + α O2) / (sqrt(V̂) + ε)

    ``M̂``, ``V̂`` are bias-corrected (``M̂1 = M1 / (1 − β1^t)``, ``M̂2 = M2 / (1 − β3^k)`` after ``k`` slow
    updates, ``V̂ = V / (1 − β2^t)``). That is ``momentum_mode="ema"`` (the default); ``"accumulate"`` is
    Algorithm 1 as printed: ``M1 ← M1 + β1 g``, ``V ← V + β2 g²``, ``M2 ← M2 + β3 Σ(g over the last f steps)``,
    no bias correction (an AdaGrad whose momenta never forget). See docs/decisions.md for the choice.

    As in Algorithm 1, ``O2`` is computed once per chunk, at its end, and serves the next ``f`` steps; the first
    chunk has ``O2 = 0``.

    ``NS_k`` (:func:`~nestedmemory.memory.maps.newton_schulz`, fp32) is scale-free, so Algorithm 1's
    ``(O1 + α O2) / (sqrt(V) + ε)`` would have the units of 1/gradient; giving each ``O`` the Frobenius norm of
    its momentum (equalising the singular values at equal energy) makes the update Adam's in scale — exactly
    Adam's when the momentum has rank 1 — so ``lr`` is an Adam learning rate. Parameters that are not matrices
    (``ndim < 2``, or the group's ``use_muon=False``) skip Newton–Schulz: ``O = M̂`` (Adam with multi-scale
    momentum).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9),
                 alpha: float = 1.0, frequency: int = 10, ns_steps: int = 5, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_mode: str = "ema", use_muon: bool | None = None):
        defaults = dict(lr=lr, betas=betas, alpha=alpha, frequency=frequency, ns_steps=ns_steps, eps=eps,
                        weight_decay=weight_decay, momentum_mode=momentum_mode, use_muon=use_muon)
        super().__init__(params, defaults)

    @staticmethod
    def check(group: dict) -> None:
        betas("betas", group["betas"], 3)
        nonnegative("alpha", group["alpha"])
        positive_int("frequency", group["frequency"])
        positive_int("ns_steps", group["ns_steps"])
        positive("eps", group["eps"])
        require(group["momentum_mode"] in MOMENTUM_MODES, "momentum_mode", group["momentum_mode"],
                f"one of {MOMENTUM_MODES}")
        muon_switch("use_muon", group["use_muon"])

    def update(self, p: torch.Tensor, group: dict) -> None:
        state, g = self.state[p], p.grad
        (beta1, beta2, _), ema = group["betas"], group["momentum_mode"] == "ema"
        if not state:
            state.update(step=0, slow_steps=0, fast=torch.zeros_like(p), second=torch.zeros_like(p),
                         slow=torch.zeros_like(p), chunk=torch.zeros_like(p), slow_update=torch.zeros_like(p))
        state["step"] += 1
        state["chunk"].add_(g)
        if ema:
            state["fast"].lerp_(g, 1 - beta1)
            state["second"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
            fast = state["fast"] / (1 - beta1 ** state["step"])
            second = state["second"] / (1 - beta2 ** state["step"])
        else:
            fast = state["fast"].add_(g, alpha=beta1)
            second = state["second"].addcmul_(g, g, value=beta2)
        direction = self._orthogonal(fast, p, group).add_(state["slow_update"], alpha=group["alpha"])
        p.addcdiv_(direction.to(p.dtype), second.sqrt().add_(group["eps"]), value=-group["lr"])
        if state["step"] % group["frequency"] == 0:
            self._slow_step(p, state, group)

    def _slow_step(self, p: torch.Tensor, state: dict, group: dict) -> None:
        """The low-frequency level: fold the finished chunk into ``M2`` and recompute ``O2``."""
        beta3, chunk = group["betas"][2], state["chunk"]
        state["slow_steps"] += 1
        if group["momentum_mode"] == "ema":
            slow = state["slow"].lerp_(chunk / group["frequency"], 1 - beta3) / (1 - beta3 ** state["slow_steps"])
        else:
            slow = state["slow"].add_(chunk, alpha=beta3)
        state["slow_update"] = self._orthogonal(slow, p, group).to(p.dtype)
        chunk.zero_()

    @staticmethod
    def _orthogonal(momentum: torch.Tensor, p: torch.Tensor, group: dict) -> torch.Tensor:
        """``NS_k(M) · ‖M‖_F / ‖NS_k(M)‖_F`` in fp32 for a matrix parameter, a (fp32) copy of ``M`` otherwise."""
        wide = momentum.to(torch.promote_types(momentum.dtype, torch.float32))
        if not uses_muon(group, p):
            return wide.clone()
        ortho = orthogonalise(wide, group["ns_steps"])
        return ortho.mul_(wide.norm() / ortho.norm().clamp_min(torch.finfo(ortho.dtype).tiny))
