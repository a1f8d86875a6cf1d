"""The outer optimizer and its schedule: AdamW from torch, or Muon / M3 from :mod:`nestedmemory.optim`
(imported by name, when asked for); linear warm-up then cosine decay."""

from __future__ import annotations

import importlib
import math

import torch

from .config import OptimConfig

#: name → (module, class, default keyword arguments).
OPTIMIZERS = {
    "adamw": ("torch.optim", "AdamW", dict(betas=(0.9, 0.95))),
    "muon": ("nestedmemory.optim", "Muon", {}),
    "m3": ("nestedmemory.optim", "M3", {}),
}


def param_groups(model: torch.nn.Module, weight_decay: float, orthogonalise: bool) -> list[dict]:
    """Matrices (decayed), embeddings and LM head (decayed; never orthogonalised: their rows are independent
    vectors), vectors — norms, biases, gate parameters — (not decayed). ``orthogonalise`` adds the ``use_muon``
    switch of Muon / M3 to each group."""
    embeddings = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) for p in m.parameters()}
    groups = {"matrices": [], "embeddings": [], "vectors": []}
    for p in model.parameters():
        if p.requires_grad:
            kind = "embeddings" if id(p) in embeddings else "matrices" if p.ndim >= 2 else "vectors"
            groups[kind].append(p)
    settings = {"matrices": dict(weight_decay=weight_decay, use_muon=True),
                "embeddings": dict(weight_decay=weight_decay, use_muon=False),
                "vectors": dict(weight_decay=0.0, use_muon=False)}
    return [dict(params=params, **{k: v for k, v in settings[kind].items() if orthogonalise or k != "use_muon"})
            for kind, params in groups.items() if params]


def optimizer_class(name: str) -> tuple[type, dict]:
    """The optimizer class called ``name`` in :data:`OPTIMIZERS` (imported now) and its default keywords."""
    module, cls, defaults = OPTIMIZERS[name]
    return getattr(importlib.import_module(module), cls), defaults


def build_optimizer(model: torch.nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    cls, defaults = optimizer_class(config.name)
    groups = param_groups(model, config.weight_decay, orthogonalise=config.name != "adamw")
    return cls(groups, lr=config.lr, **{**defaults, **config.options})


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, max_steps: int):
    """``LambdaLR``: factor ``(s + 1) / warmup`` during warm-up, then cosine from 1 to ``min_lr_ratio`` at
    ``max_steps``."""
    warmup, floor = config.warmup_steps, config.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, max_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
