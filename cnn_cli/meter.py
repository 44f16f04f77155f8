"""The training loop's running numbers (loss, right answers), kept where they are computed
and read in one go now and then.

Reading a number off the device (`.item()`) waits for the device to finish all queued work:
on a GPU every step would then start with an empty queue, and on a CPU each read and its
small tensor ops cost about as much as a small network's step (docs/performance.md). So
each batch's loss and count of right answers stay tensors until the loop reads them: at
the steps it logs, at the end of an epoch and when it stops. Read values are exactly the
per-step ones: each batch's mean loss as a Python float, times its size, summed in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnn_cli import distributed


@dataclass
class Batches:
    """The numbers of one read: each batch's summed loss and size, and the optimizer step it
    was part of (over all processes), the right answers among them, and whether any process
    was asked to stop."""

    loss_sums: list[float]
    sizes: list[int]
    steps: list[int]
    correct: int
    stop: bool

    def first_non_finite(self) -> int | None:
        """The index of the first batch whose loss is NaN or infinite, if any."""
        return next((i for i, value in enumerate(self.loss_sums) if not math.isfinite(value)), None)

    def step_loss(self, step: int) -> float:
        """The mean loss of the optimizer step `step`'s batches (all of them read here)."""
        mine = [i for i, s in enumerate(self.steps) if s == step]
        return sum(self.loss_sums[i] for i in mine) / sum(self.sizes[i] for i in mine)


@dataclass
class Meter:
    """The batches trained since the last read, their numbers still tensors on the device."""

    losses: list[Tensor] = field(default_factory=list)  # each batch's mean loss
    predictions: list[Tensor] = field(default_factory=list)  # each batch's predicted classes
    labels: list[Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)  # each batch's samples on this process
    steps: list[int] = field(default_factory=list)  # the optimizer step each batch is part of

    def add(self, loss: Tensor, logits: Tensor, labels: Tensor, step: int) -> None:
        """One batch: its mean loss, its logits and the labels its accuracy is counted on."""
        self.losses.append(loss.detach())
        self.predictions.append(logits.detach().argmax(1))  # compared when read: one kernel a step, not three
        self.labels.append(labels)
        self.sizes.append(len(labels))
        self.steps.append(step)

    def read(self, stop: bool, device: torch.device, world: int = 1) -> Batches:
        """The batches since the last read, summed over the `world` processes under torchrun
        (one exchange, which also agrees on whether to stop), and forget them."""
        if self.losses:
            means = torch.stack(self.losses).float().tolist()
            correct = int((torch.cat(self.predictions) == torch.cat(self.labels)).sum())
        else:
            means, correct = [], 0
        loss_sums = [mean * size for mean, size in zip(means, self.sizes)]  # as loss.item() * len(labels)
        *loss_sums, correct, stopping = distributed.sum_over_ranks([*loss_sums, correct, float(stop)], device)
        read = Batches(loss_sums, [size * world for size in self.sizes], self.steps, int(correct), bool(stopping))
        self.losses, self.predictions, self.labels, self.sizes, self.steps = [], [], [], [], []
        return read
