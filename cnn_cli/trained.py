"""A trained model, from its checkpoint: what cnn-eval, cnn-predict and cnn-export start from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from cnn_cli import checkpoint, data as data_mod, tta as tta_mod
from cnn_cli.builder import build_from_config, check_norm
from cnn_cli.errors import UserError


@dataclass
class Trained:
    """A checkpoint's model (eval mode, on the CPU) with what it was trained with."""

    model: nn.Sequential
    config: DictConfig  # the run's whole config: dataset, trainer, ...
    path: Path  # the checkpoint file
    mean: Tensor  # (C,): the dataset's per-channel normalisation
    std: Tensor
    tta: str | None  # the run's trainer.tta: how its validation and test scored each image

    def scoring(self) -> nn.Module:
        """The model as the run's validation and test called it (its mirror-image averaging, if
        any): what cnn-eval scores, cnn-predict classifies with and cnn-export writes."""
        return tta_mod.wrap(self.model, self.tta)

    def normalize(self, samples: Tensor) -> Tensor:
        """Raw samples (uint8 pixels or float readings, as the dataset stores them) -> what the
        model was trained on."""
        return data_mod.normalize(samples, self.mean, self.std)


def load_trained(path: str | Path, key: str = "checkpoint") -> Trained:
    """Rebuild a checkpoint's model from its own stored config and load its weights: what
    cnn-eval, cnn-predict and cnn-export start from, so preprocessing is never retyped."""
    file = checkpoint.resolve(path, key, prefer=("best.pt", "last.pt"))
    state = checkpoint.load(file, key)
    train_cfg = checkpoint.stored_config(state["config"])
    # a checkpoint written before trainer.tta existed has no such key (its stored config is read as
    # it is, not merged with the schema): its run scored each image once
    tta = train_cfg.trainer.get("tta")
    try:  # checked as cnn-train checks it: a shared checkpoint's dataset.std=[0] would predict NaN
        check_norm(train_cfg.model)
        data_mod.check(train_cfg.dataset)
        tta_mod.check(tta, train_cfg.dataset.input_shape)
    except UserError as err:
        raise UserError(f"{key}={path}: its stored config is not valid ({err}); it was damaged or edited, and cannot "
                        "be used") from None
    model = build_from_config(train_cfg).model
    checkpoint.load_weights(model, state, f"{key}={path}")
    mean, std = (torch.tensor(values, dtype=torch.float32) for values in data_mod.channel_stats(train_cfg.dataset))
    return Trained(model.eval(), train_cfg, file, mean, std, tta)
