"""The run context of a process: its rank, the number of processes and its device.

One process is ``RunContext()`` (rank 0 of 1, CPU). Under ``torchrun`` (``WORLD_SIZE`` > 1)
:func:`join` starts the process group — NCCL on CUDA unless ``S2DM_DDP_BACKEND=gloo``, gloo otherwise
— and gives each rank the GPU ``LOCAL_RANK``. Training and generation both take their context from
here, so the backend rule and the rank-0 conventions are written once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class RunContext:
    """Who this process is: ``rank`` of ``world`` processes, computing on ``device``."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (``[obj]`` on one process)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def on_main(self, fn, error=RuntimeError):
        """``fn()`` on rank 0, its result on every rank; an error there is raised on every rank (as
        ``error`` with its message on the others), so no rank waits forever for a failed one."""
        result, err = None, None
        if self.main:
            try:
                result = fn()
            except Exception as e:
                err = e
        shared = self.gather((result, None if err is None else str(err)))[0]
        if err is not None:
            raise err
        if shared[1] is not None:
            raise error(shared[1])
        return shared[0]


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> RunContext:
    """This process's context for ``device`` (a resolved ``torch.device``): under torchrun the process
    group is started and a CUDA device becomes ``cuda:LOCAL_RANK`` (and the current device)."""
    device = torch.device(device)
    world = world_size()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)  # all_gather_object on NCCL uses the current device
    if world > 1 and not dist.is_initialized():
        nccl = device.type == "cuda" and os.environ.get("S2DM_DDP_BACKEND") != "gloo"
        dist.init_process_group("nccl" if nccl else "gloo")
    return current(device)


def current(device=None) -> RunContext:
    """The context of the process group already started (rank 0 of 1 without one)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if not dist.is_initialized():
        return RunContext(0, 1, device)
    return RunContext(dist.get_rank(), dist.get_world_size(), device)


def leave() -> None:
    """Wait for every rank, then end the process group (when one was started)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
