"""Test-time augmentation (trainer.tta): validation and the test score each image as the mean
of the model's logits on it and on its mirror image (airbench's flip TTA), which usually
classifies photos a little better for one more forward pass; training is unchanged.

The run's config records the setting, so cnn-eval scores a checkpoint the way its run did."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from cnn_cli.errors import UserError

CHOICES = ("flip",)


def check(tta: str | None, input_shape: Sequence[int]) -> None:
    """A known kind, and for samples it fits: mirroring a 1-D signal would reverse time."""
    if tta is None:
        return
    if tta not in CHOICES:
        raise UserError(f"trainer.tta={tta}: choose {' or '.join(CHOICES)} (mean of each image and its mirror image), "
                        "or null for none")
    if len(input_shape) == 2:
        raise UserError(f"trainer.tta={tta} mirrors images left to right, but the samples are 1-D signals "
                        f"({' x '.join(map(str, input_shape))}: channels x steps), where that would reverse time; "
                        "set trainer.tta=null")


class FlipAveraged(nn.Module):
    """`model` scored on each batch and on its left-right mirror: the mean of the two logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # evaluate() puts the model back as it found it: the wrapper must agree

    def forward(self, images: Tensor) -> Tensor:
        return (self.model(images) + self.model(images.flip(-1))) / 2


def wrap(model: nn.Module, tta: str | None) -> nn.Module:
    """The model as validation and the test call it."""
    return FlipAveraged(model) if tta == "flip" else model
