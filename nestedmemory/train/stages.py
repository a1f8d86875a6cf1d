"""TNT's two-stage schedule (TNT §3.3) as a training option: the last ``stage2_steps`` optimizer steps of a run
train the same model with smaller local chunks ``C'_{L,i}`` (stage 2). Only the local memories' chunk sizes change
(:meth:`~nestedmemory.layers.TNTMemory.set_local_chunk_sizes`): parameters, optimizer state, schedule and data go on
as they were. The model config is updated too, so checkpoints of stage 2 load with the stage-2 chunks."""

from __future__ import annotations

from ..layers import TNTMemory
from .errors import UserError


def stage2_start(config, model) -> int | None:
    """The step from which stage 2 runs (``None``: no stage 2), after checking ``config.tnt`` against ``model``."""
    steps, sizes = config.tnt.stage2_steps, config.tnt.local_chunk_sizes
    if not (isinstance(steps, int) and 0 <= steps <= config.max_steps):
        raise UserError(f"tnt.stage2_steps must be an integer in [0, max_steps={config.max_steps}], got {steps!r}")
    if steps == 0:
        return None
    layers = [m for m in model.modules() if isinstance(m, TNTMemory)]
    if not layers:
        raise UserError(f"tnt.stage2_steps needs a TNT model; preset {config.model.preset!r} has architecture "
                        f"{model.config.architecture!r}")
    try:
        layers[0].check_local_chunk_sizes(sizes or ())
    except (TypeError, ValueError) as error:
        raise UserError(f"tnt.local_chunk_sizes: {error}") from error
    return config.max_steps - steps


def enter_stage2(model, sizes) -> None:
    """Switch every TNT layer of ``model`` (and its config) to the local chunk sizes ``sizes``."""
    for module in model.modules():
        if isinstance(module, TNTMemory):
            module.set_local_chunk_sizes(sizes)
    model.config.memory = {**model.config.memory, "local_chunk_sizes": list(sizes)}
