"""Delta momentum: momentum as an associative memory trained with the ℓ2 (delta) rule (NL §4, Eq. 48-49;
SPEC §6.2)."""

from __future__ import annotations

import torch

from .common import ParamwiseOptimizer, as_matrix, fraction, nonnegative


def right_projection(m: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``m gᵀ g`` for matrices ``m``, ``g`` of shape ``[rows, cols]``, multiplied in the cheaper order
    (``O(rows · cols · min(rows, cols))``)."""
    if m.shape[0] > m.shape[1]:
        return m @ (g.T @ g)
    return (m @ g.T) @ g


class DeltaMomentum(ParamwiseOptimizer):
    """Delta momentum (NL Eq. 48-49, with the preconditioner ``P_i = I``)::

        m ← α m − c · m gᵀ g − η g,    c = β / (1 + β ‖g‖_F²)
        W ← W + m

    on the matrix view ``[shape[0], rest]`` of the parameter (a vector is one row, where ``m gᵀ g = ⟨m, g⟩ g``);
    ``β`` is ``inner_lr``.

    Eq. 48-49 replace the dot-product internal objective of momentum (NL Eq. 33-34, ``m ← α m − η g``) by an ℓ2
    regression of the gradient keys (``‖m ∇Lᵀ − P‖²``), whose GD step adds the erase term ``− m ∇Lᵀ∇L``: the
    delta rule, as DGD (NL Eq. 56-57) does for weights. As printed (unit inner step, ``c = 1``), ``α I − gᵀ g``
    has eigenvalues ``α − σᵢ²``, which leave ``[−1, 1]`` (the momentum blows up) once a singular value of the
    gradient exceeds ``sqrt(1 + α)``. Here the erase is the implicit (proximal) step of that regression, the
    Sherman–Morrison form DGD derives (NL App. C: ``η' = η / (1 + η ‖x‖²)``): ``c gᵀ g`` has eigenvalues
    ``β σᵢ² / (1 + β Σⱼ σⱼ²) ∈ [0, 1)``, so ``α I − c gᵀ g`` is a contraction for ``α ∈ [0, 1)`` and the momentum
    stays bounded like plain momentum's. For small gradients (``β ‖g‖² ≪ 1``) it is Eq. 48 with inner step
    ``β`` (``β = 1``: as printed); for large ones it tends to the projector on the normalised gradient. For a
    rank-1 gradient ``δ xᵀ`` (one example through a linear layer) ``gᵀ g ∝ x xᵀ``: before the new gradient is
    written, the momentum's content along the current key ``x`` is (partly) erased, so along it the step is closer
    to plain GD while momentum carries on in the orthogonal directions. The erase acts on the right (input side,
    ``m ∇Lᵀ∇L``) as in the arXiv version; the NeurIPS form ``(α I − ∇Lᵀ∇L) m`` is the same for vectors.
    ``inner_lr=0`` is heavy-ball momentum, ``torch.optim.SGD(lr=η, momentum=α)``.
    """

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, inner_lr: float = 1.0,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, inner_lr=inner_lr, weight_decay=weight_decay))

    @staticmethod
    def check(group: dict) -> None:
        fraction("momentum", group["momentum"])
        nonnegative("inner_lr", group["inner_lr"])

    def update(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        m, g = as_matrix(state["momentum_buffer"]), as_matrix(p.grad)
        beta = group["inner_lr"]
        erase = right_projection(m, g).mul_(beta / (1 + beta * g.pow(2).sum()))
        m.mul_(group["momentum"]).sub_(erase).add_(g, alpha=-group["lr"])
        p.add_(state["momentum_buffer"])
