"""What a run shows in TensorBoard beyond scalars: hparams, filters, mistakes, histograms."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary


# Keys that change only how a run is computed or logged, not what it learns: in the HParams
# tab they would be columns holding the same value in every run.
NOT_HPARAMS = {"optimizer._partial_", "optimizer.foreach", "optimizer.fused", "optimizer.differentiable",
               "optimizer.capturable", "scheduler._partial_", "scheduler.last_epoch", "trainer.progress",
               "trainer.log_every_n_steps", "trainer.log_histograms"}


def flat_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The chosen hyperparameters (of a recorded config) as flat key -> scalar, for the HParams tab."""
    chosen = {"model": config["model"]["name"], "dataset": config["dataset"]["name"], "seed": config["seed"]}
    for group in ("optimizer", "scheduler", "trainer"):
        for key, value in config[group].items():
            if f"{group}.{key}" in NOT_HPARAMS:
                continue
            name = f"{group}.{key}" if key != "_target_" else group
            if isinstance(value, str) and key == "_target_":
                value = value.rsplit(".", 1)[-1]
            chosen[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return chosen


def write_hparams(writer: SummaryWriter, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
    """hparams in the run's own event file: SummaryWriter.add_hparams would open a sub-run,
    which splits one run in two in TensorBoard's run list."""
    for summary in hparams_summary(hparams, metrics):
        writer.file_writer.add_summary(summary)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)


def first_conv_filters(model: nn.Module) -> Tensor | None:
    """The first 2-d conv layer's filters as one normalised image grid (C x H x W)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    weight = conv.weight.detach().float().cpu()
    if weight.shape[1] != 3:  # grey (or many-channel) input: show the first input channel
        weight = weight[:, :1]
    weight = F.interpolate(weight, scale_factor=max(1, 48 // weight.shape[-1]), mode="nearest")
    low = weight.amin(dim=(1, 2, 3), keepdim=True)
    high = weight.amax(dim=(1, 2, 3), keepdim=True)
    weight = (weight - low) / (high - low).clamp_min(1e-8)  # each filter on its own 0..1 scale
    return tile_grid(weight, nrow=int(np.ceil(np.sqrt(len(weight)))), pad_value=1.0)


def mistakes_grid(images: Tensor, predicted: Tensor, true: Tensor, classes: Sequence[str],
                  limit: int = 64) -> np.ndarray | None:
    """Up to `limit` misclassified images, each captioned 'p:<predicted> t:<true>' (H x W x 3)."""
    wrong = (predicted != true).nonzero().flatten()[:limit].tolist()
    if not wrong:
        return None
    tiles = []
    for i in wrong:
        img = images[i].cpu()
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
        pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((img.shape[2] * 3, img.shape[1] * 3), Image.NEAREST)
        tile = Image.new("RGB", (pil.width, pil.height + 14), "white")
        tile.paste(pil, (0, 0))
        caption = f"p:{classes[predicted[i]][:7]} t:{classes[true[i]][:7]}"
        ImageDraw.Draw(tile).text((1, pil.height + 1), caption, fill="red")
        tiles.append(torch.from_numpy(np.array(tile)).permute(2, 0, 1))
    grid = tile_grid(torch.stack(tiles), nrow=8, pad_value=128)
    return grid.permute(1, 2, 0).numpy()


def tile_grid(tiles: Tensor, nrow: int, pad_value: float, padding: int = 2) -> Tensor:
    """N x C x H x W tiles -> one C x H' x W' image, `nrow` tiles a row, as
    torchvision.utils.make_grid lays them out (written here: importing torchvision costs
    every start 2.8 s)."""
    n, c, h, w = tiles.shape
    rows = -(-n // nrow)
    cols = min(n, nrow)
    grid = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        top, left = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, top:top + h, left:left + w] = tile
    return grid


def write_histograms(writer: SummaryWriter, model: nn.Module, step: int) -> None:
    for name, param in model.named_parameters():
        writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
    for name, buffer in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            writer.add_histogram(f"batchnorm/{name}", buffer.detach().float().cpu(), step)
