"""What the Nested Learning optimizers share: hyper-parameter checks, the matrix view of a parameter and Muon's
orthogonalisation of it (SPEC §6.2, §6.4)."""

from __future__ import annotations

import math
from numbers import Real

import torch

from ..memory.maps import newton_schulz


class ParamwiseOptimizer(torch.optim.Optimizer):
    """A :class:`torch.optim.Optimizer` that updates each parameter with a gradient on its own (:meth:`update`),
    after decoupled weight decay ``W ← (1 − η λ) W`` (AdamW); empty parameters are skipped. Every param group
    (the constructor's defaults and any per-group override) is checked before it is added (``lr``,
    ``weight_decay`` here, the rest by :meth:`check`): a bad value raises ``ValueError`` naming it."""

    @staticmethod
    def check(group: dict) -> None:
        """Check the optimizer's own hyper-parameters of ``group``."""
        raise NotImplementedError

    def update(self, p: torch.Tensor, group: dict) -> None:
        """Apply one step to ``p`` from ``p.grad`` (which is not ``None``)."""
        raise NotImplementedError

    def add_param_group(self, param_group: dict) -> None:
        group = {**self.defaults, **param_group}
        nonnegative("lr", group["lr"])
        nonnegative("weight_decay", group["weight_decay"])
        self.check(group)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.numel():
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    self.update(p, group)
        return loss


def require(ok: bool, name: str, value, expected: str) -> None:
    """Raise ``ValueError`` naming the hyper-parameter ``name`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def nonnegative(name: str, value) -> None:
    require(_real(value) and value >= 0, name, value, "a finite number >= 0")


def positive(name: str, value) -> None:
    require(_real(value) and value > 0, name, value, "a finite number > 0")


def fraction(name: str, value) -> None:
    """A decay or momentum factor: ``0 <= value < 1``."""
    require(_real(value) and 0 <= value < 1, name, value, "a number in [0, 1)")


def positive_int(name: str, value) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, name, value, "an integer > 0")


def boolean(name: str, value) -> None:
    require(isinstance(value, bool), name, value, "True or False")


def betas(name: str, value, count: int) -> None:
    """A tuple of ``count`` factors in ``[0, 1)``."""
    require(isinstance(value, (tuple, list)) and len(value) == count, name, value, f"a tuple of {count} numbers")
    for i, beta in enumerate(value):
        fraction(f"{name}[{i}]", beta)


def muon_switch(name: str, value) -> None:
    """The ``use_muon`` group key: ``None`` (orthogonalise parameters with ``ndim >= 2``) or a bool."""
    require(value is None or isinstance(value, bool), name, value, "None, True or False")


def uses_muon(group: dict, p: torch.Tensor) -> bool:
    """Whether ``p`` takes the orthogonalised (matrix) update: the group's ``use_muon``, else ``p.ndim >= 2``."""
    return p.ndim >= 2 if group["use_muon"] is None else group["use_muon"]


def matrix_shape(shape: torch.Size) -> tuple[int, int]:
    """The shape of the matrix view of a parameter: ``[shape[0], rest]`` (a linear weight ``[out, in]`` as is, a
    conv kernel flattened over its input axes); a vector or scalar is one row ``[1, n]``."""
    return (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else (1, math.prod(shape))


def as_matrix(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as a matrix (:func:`matrix_shape`)."""
    return t.reshape(matrix_shape(t.shape))


def orthogonalise(update: torch.Tensor, steps: int) -> torch.Tensor:
    """``NS_k`` (:func:`~nestedmemory.memory.maps.newton_schulz`) of the matrix view of ``update``, computed and
    returned in at least fp32 (also for bf16 parameters), in ``update``'s shape."""
    wide = update.to(torch.promote_types(update.dtype, torch.float32))
    return newton_schulz(as_matrix(wide), steps).reshape(update.shape)
