"""An exponential moving average of the weights (trainer.ema_decay), as timm's ModelEmaV2:
a copy of the model whose every floating-point entry follows the trained one slowly, which
usually validates and tests better than the last step's weights, at no training cost.

The decay warms up as TensorFlow's ExponentialMovingAverage does, min(decay, (1 + t) / (10 + t))
at optimizer step t, so a short run is not dominated by its random start. The average is a
function of the trained weights and the step alone, so the checkpoint keeps it and a resumed
run continues it exactly."""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of `model`: `update` after each optimizer step, `model` to evaluate."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards `model`'s weights after optimizer step `step` (1, 2, ...);
        batchnorm's running statistics are averaged too, its batch counter copied."""
        decay = min(self.decay, (1 + step) / (10 + step))
        floats, counters = ([], []), ([], [])
        for average, now in zip(self.model.state_dict().values(), model.state_dict().values()):
            pair = floats if average.is_floating_point() else counters
            pair[0].append(average)
            pair[1].append(now)
        # one call each for all tensors, not one a tensor: a GPU launches a few kernels, not hundreds
        if floats[0]:
            torch._foreach_lerp_(*floats, 1 - decay)
        if counters[0]:  # none without batchnorm
            torch._foreach_copy_(*counters)
