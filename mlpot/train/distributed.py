"""Data-parallel training over processes with torch.distributed (gloo on CPU, nccl on GPUs).

Every rank holds the whole data set and walks the same sequence of global batches; rank r takes
the r-th contiguous share of each batch. Losses are normalised by the global batch's counts
(``loss.global_counts``), so summing the ranks' gradients (one all-reduce of a flat buffer per
step) gives exactly the single-process gradient, up to floating-point summation order. Gradient
clipping, the optimizer, the scheduler and the EMA then run identically on every rank.

We all-reduce gradients ourselves instead of wrapping the model in DistributedDataParallel: the
force loss needs ``torch.autograd.grad`` inside the forward pass, which DDP does not support, and
an explicit sum makes the equivalence with one process easy to see.

Launch with ``torchrun --nproc-per-node N -m mlpot.cli train ...`` or ``mlpot train --nproc N``.
"""

import os
import socket
from typing import Sequence

import torch
import torch.distributed as dist


class TrainingProcessError(ValueError):
    """A spawned training process failed; the message is the last line of its traceback."""


class Context:
    """Rank and world size; collective helpers that are no-ops on one process."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def share(self, items: Sequence):
        """This rank's contiguous share of a global batch."""
        n = len(items)
        start = (n * self.rank) // self.world_size
        stop = (n * (self.rank + 1)) // self.world_size
        return items[start:stop]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_gradients(self, parameters) -> None:
        """Σ over ranks of every parameter's gradient, through one flat buffer."""
        if not self.active:
            return
        parameters = [p for p in parameters if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in parameters:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def broadcast_module_(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (they are seeded alike; this makes sure)."""
        if not self.active:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def from_environment(device: str = "cpu") -> Context:
    """A context for the process group torchrun (or ``spawn``) described in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size())


def rank_device(device: torch.device, context: Context) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a data-parallel run."""
    if device.type == "cuda" and device.index is None and context.active:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", context.rank)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, function, args) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of oversubscribing them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    function(args)


def spawn(world_size: int, function, args) -> None:
    """Run ``function(args)`` in ``world_size`` new processes forming one gloo process group."""
    import torch.multiprocessing as mp

    try:
        mp.spawn(_worker, args=(world_size, _free_port(), function, args), nprocs=world_size,
                 join=True)
    except mp.ProcessRaisedException as error:
        # the child's traceback ends with "ExceptionType: message"; surface the message
        last = str(error).strip().splitlines()[-1]
        raise TrainingProcessError(f"a training process failed: {last}") from None
