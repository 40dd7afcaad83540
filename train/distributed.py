"""Data-parallel training under ``torchrun``: which rank this is, and the collective operations it needs.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and the rendezvous variables; :func:`setup` joins the
process group (gloo on the CPU, NCCL on CUDA). Each rank steps its share of the environments and
computes gradients on its own data; :func:`all_reduce_gradients` averages them so that every rank
takes the same optimizer step, and rank 0 alone logs, evaluates and writes the run directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DataParallel", "SINGLE", "current", "launched_world_size", "setup", "teardown"]


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world_size`` (1: a plain run)."""

    rank: int = 0
    world_size: int = 1

    @property
    def lead(self) -> bool:
        """Rank 0: the one that logs, evaluates and writes."""
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (itself in a plain run)."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients over the ranks, in one flat all-reduce."""
        if self.world_size == 1:
            return
        params = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])  # (total parameters,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's weights and buffers."""
        if self.world_size > 1:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank when ``flag`` is true on any (e.g. rank 0 reached the target return)."""
        if self.world_size == 1:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=device)).item() > 0)

    def gather_rows(self, array: torch.Tensor) -> torch.Tensor:
        """Every rank's ``array`` ``(N, ...)`` stacked along the first axis (equal ``N`` on each rank)."""
        if self.world_size == 1:
            return array
        parts = [torch.empty_like(array) for _ in range(self.world_size)]
        dist.all_gather(parts, array.contiguous())
        return torch.cat(parts)


SINGLE = DataParallel()


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 outside torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {value!r}") from None


def setup(device: torch.device) -> DataParallel:
    """Join the process group torchrun describes (gloo on the CPU, NCCL on CUDA); a plain run returns ``SINGLE``."""
    world_size = launched_world_size()
    if world_size == 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return current()


def current() -> DataParallel:
    """The running process group's rank and size (``SINGLE`` when there is none)."""
    if not dist.is_available() or not dist.is_initialized():
        return SINGLE
    return DataParallel(dist.get_rank(), dist.get_world_size())


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
