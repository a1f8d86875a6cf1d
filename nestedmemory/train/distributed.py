"""One process or many: under ``torchrun`` (``WORLD_SIZE`` > 1) a process group (NCCL on GPUs, gloo on the CPU),
the model wrapped in DDP or FSDP2 (``fully_shard``), every global batch split by rows over the processes, and
sums / flags reduced across them. With one process every helper is the identity."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (whose size the world size divides)."""
        rows = batch.shape[0] // self.world
        return batch[self.rank * rows:(self.rank + 1) * rows].to(self.device, non_blocking=True)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        return bool(self.sum(torch.tensor(float(flag), device=self.device)).item())

    def broadcast(self, value):
        """Rank 0's ``value`` (any picklable object), on every process."""
        if self.world == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str | None = None) -> Processes:
    """Join the ``torchrun`` process group if there is one; pick the device (default: CUDA if available, this
    process's local GPU under ``torchrun``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank() if world > 1 else 0, world, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, processes: Processes, parallel: str) -> torch.nn.Module:
    """The model to train: itself (one process), ``DistributedDataParallel``, or sharded in place by FSDP2 —
    each block, then the rest."""
    if processes.world == 1:
        return model
    if parallel == "ddp":
        ids = [processes.device.index] if processes.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if getattr(model.config, "cms", None) is not None:  # CMS fast weights are plain tensors beside the DTensors
        raise UserError(f"--parallel fsdp does not support Continuum Memory System presets yet "
                        f"({model.config.cms}); use --parallel ddp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(processes.device.type, (processes.world,))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
