"""One place that knows about torchrun: rank, world size, device, barriers, and the process group.

Started by torchrun (WORLD_SIZE > 1), the first call sets up the default process group: NCCL on GPUs, gloo
on CPUs. A plain single process gets a context with rank 0 of 1 and no-op collectives.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from avdit_cli.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def default_device(self) -> str:
        if torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return "cpu"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_max(self, value: float) -> float:
        """The largest value over ranks (e.g. a stop flag)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())


    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank (picklable plain data only)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise sum or max of a few floats over ranks (float64, one collective)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def dist_context() -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo", timeout=timedelta(minutes=30))
        # Torn down before the interpreter exits: a group left to die with the process can abort a rank at exit
        # (gloo: "terminate called without an active exception", SIGABRT) after the run itself succeeded.
        atexit.register(_destroy_process_group)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str | None, ctx: DistContext | None = None) -> torch.device:
    """--device, or the best one; a bare ``cuda`` under torchrun means this rank's GPU."""
    ctx = ctx or DistContext()
    if name is None:
        return torch.device(ctx.default_device())
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: got {name!r}, expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", ctx.local_rank)
    elif dev.type != "cpu":
        raise ConfigError(f"--device: got {name!r}, expected cpu, cuda or cuda:N")
    return dev
