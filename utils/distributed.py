"""torch.distributed set-up for DDP under torchrun (or srun exporting the same variables): one process per
device, rank 0 writes, collectives for exact metrics and agreed decisions. Single-process runs skip all of it."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from utils import errors


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> Dist:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); nccl on CUDA, gloo on CPU, unless `backend` says otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Dist(rank, local_rank, world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    return not active() or dist.get_rank() == 0


# What gloo and NCCL say inside a collective (DDP's included) when a peer is gone.
_PEER_GONE = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|communicator was aborted")


def lost_contact(e: BaseException) -> bool:
    """Whether `e` says that the other processes can no longer be reached (one of them died): torch's DistError, or
    the RuntimeError of a collective whose peer is gone."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and active()
                                             and _PEER_GONE.search(str(e)) is not None)


def rank_prefix() -> str:
    """'[rank N] ' under DDP, to tell whose message it is."""
    return f"[rank {dist.get_rank()}] " if active() else ""


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place sum or max over all processes (no-op in a single process)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor


def gather(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process (`[obj]` in a single process)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics, which each process updates from its own batches) in every process."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def on_main(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` run by rank 0 alone (writing files), its result handed to every process.

    If it fails, every process fails at once instead of waiting in the next collective until it times out:
    rank 0 with its own error, the others with `PeerFailed`.
    """
    if not active():
        return fn(*args)
    outcome: tuple[str, Any] | None = None
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = ("ok", fn(*args))
        except BaseException as e:
            failure, outcome = e, ("failed", getattr(e, "exit_code", 1))
    outcome = broadcast(outcome)
    if failure is not None:
        raise failure
    if outcome[0] == "failed":
        raise errors.PeerFailed(outcome[1])
    return outcome[1]


def agree(work: Callable[[], Any]) -> Any:
    """`work()` run by every process, each on its own part (building the run, checking its first batch); if it
    fails on any process, every process fails at once: that one with its own error, the others with `PeerFailed`
    naming it, instead of some going on to write the run folder and waiting for the others."""
    if not active():
        return work()
    result, failure = None, None
    try:
        result = work()
    except BaseException as e:
        failure = e
    codes = gather(None if failure is None else getattr(failure, "exit_code", 1))
    if failure is not None:
        raise failure
    failed = [rank for rank, code in enumerate(codes) if code is not None]
    if failed:
        raise errors.PeerFailed(codes[failed[0]], failed[0])
    return result
