"""torchrun integration: process group setup (NCCL on GPU, gloo on CPU), rank helpers, reductions,
threads per process, and elastic restarts (torchrun --max-restarts)."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hostinfo import usable_cores

# torchrun shares its rendezvous TCPStore with the workers unless told not to; a restarted group then
# can read the previous attempt's keys (peer addresses) and fail to connect (pytorch/pytorch#135712).
SHARED_STORE_WARNING = (
    "warning: torchrun restarted the workers while sharing its rendezvous store with them; the new group may "
    "read the old group's addresses and fail to connect. Launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
    "in its environment (docs/multinode.md)"
)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a plain run is rank 0 of 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if elastic_restart_count() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and info.rank == 0:
        print(SHARED_STORE_WARNING, file=sys.stderr, flush=True)
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def launched_as_main() -> bool:
    """True in a plain run and in torchrun's global rank 0 (readable before the process group exists)."""
    return os.environ.get("RANK", "0") == "0"


def elastic_restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this worker group (0: the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def set_threads_per_process(info: DistInfo) -> int:
    """Under torchrun, give each process its host's usable cores (affinity, cgroup quota) / our processes on this host (unless OMP_NUM_THREADS
    is set; torchrun sets it to 1 itself when it starts several processes per node).

    Counting the processes per host, not per agent, makes two one-process agents on one machine compute
    exactly what one two-process agent does: the intra-op thread count changes float summation order.
    """
    if not info.enabled or os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    host = socket.gethostname()
    on_this_host = sum(1 for h in all_gather_objects(host) if h == host)
    threads = max(1, usable_cores() // on_this_host)
    torch.set_num_threads(threads)
    return threads


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is set on any rank (all ranks must call it at the same point)."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(value).item() > 0)


def all_gather_objects(obj: object) -> list:
    if not dist.is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BN statistics drift apart: each rank normalises its own shard)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
