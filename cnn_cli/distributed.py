"""Data-parallel training under torchrun: which process this is, and the few collectives
the loop needs. With one process every function here is a no-op, so the loop has one path.

torchrun starts the same cnn-train in each process and sets RANK, WORLD_SIZE and
LOCAL_RANK; rank 0 writes the logs and checkpoints, the others only compute.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rank:
    index: int = 0  # RANK: 0 .. world - 1 over all nodes
    world: int = 1  # WORLD_SIZE
    local: int = 0  # LOCAL_RANK: which GPU of this node

    @property
    def main(self) -> bool:
        """Rank 0, the one process that writes."""
        return self.index == 0


def this_process() -> Rank:
    env = os.environ
    return Rank(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def start(rank: Rank, device: torch.device) -> None:
    """Join the process group: nccl between GPUs, gloo on the CPU."""
    if rank.world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Elementwise sums over all processes (the values themselves with one). `device` is
    where the sum is taken: the GPU for nccl, the CPU for gloo."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def from_main(obj):
    """Rank 0's value of a picklable object, on every rank (e.g. the run folder)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def share_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batchnorm running statistics), so each evaluates
    the model that rank 0 saves."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    if active():
        dist.barrier()


def same_weights(model: nn.Module) -> bool:
    """Whether every rank holds exactly rank 0's parameters and buffers."""
    if not active():
        return True
    mismatches, device = 0, torch.device("cpu")
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        mismatches += int(not torch.equal(reference, tensor))
        device = tensor.device
    return sum_over_ranks([mismatches], device)[0] == 0


def syncing_gradients(forward: nn.Module, ends_step: bool) -> contextlib.AbstractContextManager:
    """Where a batch's forward and backward run. Under DistributedDataParallel, a batch that does
    not end its optimizer step (trainer.accumulate_grad_batches) keeps its gradients in this
    process (no_sync), and the step's last batch averages their sum over the processes in its
    backward: one all-reduce a step, not one a batch. Anything else: no change."""
    ddp = getattr(forward, "_orig_mod", forward)  # under torch.compile: the module it compiled
    if ends_step or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext()
    return ddp.no_sync()
