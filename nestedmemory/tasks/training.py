"""One short, generic training loop for the task suites: AdamW on freshly generated examples every step."""

from __future__ import annotations

import math

import torch

from .common import check_int, model_device, step_seed


def train_on_task(model, suite, *, steps: int, batch_size: int, lr: float, seed: int, weight_decay: float = 0.0,
                  max_grad_norm: float = 1.0, until=None, check_every: int = 100, **options) -> list[float]:
    """Train ``model`` for ``steps`` AdamW steps on ``suite.generate(batch_size, seed=…, **options)``, a fresh seed
    per step (so no example is seen twice), and return the losses. ``suite`` is a suite module or its name in
    :data:`nestedmemory.tasks.SUITES`. The learning rate warms up linearly over the first 10 % of the steps, then
    follows a cosine down to 10 % of ``lr``; gradients are clipped to norm ``max_grad_norm``. Early stopping:
    ``until(model) -> bool``, when given, is asked every ``check_every`` steps (the model in eval mode) and the run
    stops once it answers True (the schedule stays that of ``steps``). The model is left in eval mode."""
    if isinstance(suite, str):
        from . import SUITES  # here: the package imports this module
        if suite not in SUITES:
            raise ValueError(f"suite must be a suite module or one of {sorted(SUITES)}, got {suite!r}")
        suite = SUITES[suite]
    steps, batch_size = check_int("steps", steps), check_int("batch_size", batch_size)
    check_every = check_int("check_every", check_every)
    if until is not None and not callable(until):
        raise ValueError(f"until must be None or a callable model -> bool, got {until!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    device = model_device(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    losses = []
    for step in range(steps):
        data = suite.generate(batch_size, seed=step_seed(seed, step), **options)
        loss = model(input_ids=data["input_ids"].to(device), labels=data["labels"].to(device)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if until is not None and (step + 1) % check_every == 0 and step + 1 < steps:
            model.eval()
            if until(model):
                break
            model.train()
    model.eval()
    return losses
