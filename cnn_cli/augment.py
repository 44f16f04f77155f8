"""Photo augmentation as whole-batch tensor operations on the training device (airbench's
way, no per-image PIL): random resized crop, small rotation and translation (one affine
resampling for all three), colour jitter, and mixup or cutmix with soft labels.

Each batch's random draws come from (seed, step), so a resumed run augments exactly as an
uninterrupted one. Batches arrive normalised; colour jitter works on the pixel values in
[0, 1] behind them. With mixup or cutmix the loss takes the mixed (soft) labels and the
training accuracy counts the prediction against each image's own (hard) label.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from cnn_cli import runtime
from cnn_cli.errors import UserError

DEFAULTS: dict[str, Any] = {"resized_crop_scale": None, "resized_crop_ratio": [3 / 4, 4 / 3], "rotate": 0.0,
                            "translate": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "mixup": 0.0,
                            "cutmix": 0.0}
IMAGES_ONLY = ("resized_crop_scale", "rotate", "translate", "brightness", "contrast", "saturation", "cutmix")
LIMITS = {"rotate": 180, "translate": 0.5, "brightness": 1, "contrast": 1, "saturation": 1}


def settings(augment: DictConfig) -> dict[str, Any]:
    """The photo augmentation keys, with their defaults where a config (an older checkpoint's) has none."""
    return {key: augment.get(key, default) for key, default in DEFAULTS.items()}


def check(augment: DictConfig, shape: Sequence[int]) -> None:
    """Each value in its range, and only where it makes sense for these samples."""
    s = settings(augment)
    for key in IMAGES_ONLY:
        if s[key] and len(shape) != 3:
            raise UserError(f"dataset.augment.{key}={s[key]} is for images (C x H x W), but the samples are "
                            f"{' x '.join(map(str, shape))}; leave it out")
    if s["saturation"] and shape[0] != 3:
        raise UserError(f"dataset.augment.saturation={s['saturation']} needs colour images (3 channels), but these "
                        f"have {shape[0]}; leave it out (brightness and contrast work on grey images)")
    scale, ratio = s["resized_crop_scale"], s["resized_crop_ratio"]
    if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
        raise UserError(f"dataset.augment.resized_crop_scale={list(scale)}: give [smallest, largest] fraction of the "
                        "image's area to crop, each in (0, 1], e.g. [0.35, 1]")
    if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
        raise UserError(f"dataset.augment.resized_crop_ratio={list(ratio)}: give [smallest, largest] width/height "
                        "of the crop, both > 0, e.g. [0.75, 1.333]")
    for key, most in LIMITS.items():
        if not 0 <= s[key] <= most:
            raise UserError(f"dataset.augment.{key}={s[key]} must be from 0 (off) to {most}")
    for key in ("mixup", "cutmix"):
        if s[key] < 0:
            raise UserError(f"dataset.augment.{key}={s[key]}: the Beta distribution's alpha must be > 0 (0: off), "
                            "e.g. 0.2 for mixup, 1.0 for cutmix")


def apply(images: Tensor, labels: Tensor, augment: DictConfig | dict[str, Any], mean: Any, std: Any, num_classes: int,
          seed: int) -> tuple[Tensor, Tensor]:
    """A normalised training batch augmented; returns it and the targets for the loss: the
    labels, or with mixup/cutmix one probability row per image. `augment`: the config, or its
    settings() read once (the training loop's, every step)."""
    s = settings(augment)
    if not any(s[key] for key in DEFAULTS if key != "resized_crop_ratio"):
        return images, labels
    gen = torch.Generator().manual_seed(seed)
    if s["resized_crop_scale"] or s["rotate"] or s["translate"]:
        images = _affine(images, s, gen)
    if s["brightness"] or s["contrast"] or s["saturation"]:
        images = _colour(images, s, mean, std, gen)
    if s["mixup"] or s["cutmix"]:
        return _mix(images, labels, s, num_classes, gen, np.random.default_rng(seed))
    return images, labels


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


def _affine(images: Tensor, s: dict[str, Any], gen: torch.Generator) -> Tensor:
    """Crop (a random area fraction and aspect ratio, at a random place), rotate and shift each
    image, resampled bilinearly back to its size in one grid_sample."""
    n, _, height, width = images.shape
    w = h = torch.ones(n)
    if s["resized_crop_scale"]:
        area = _uniform(n, *s["resized_crop_scale"], gen)
        ratio = torch.exp(_uniform(n, *map(math.log, s["resized_crop_ratio"]), gen))
        w = torch.sqrt(area * ratio * height / width).clamp(max=1)  # fractions of the width and height
        h = torch.sqrt(area / ratio * width / height).clamp(max=1)
    cx = _uniform(n, -1, 1, gen) * (1 - w)  # the crop's centre, inside the image ([-1, 1] coordinates)
    cy = _uniform(n, -1, 1, gen) * (1 - h)
    shift = 2 * s["translate"]
    cx, cy = cx + _uniform(n, -shift, shift, gen), cy + _uniform(n, -shift, shift, gen)
    angle = torch.deg2rad(_uniform(n, -s["rotate"], s["rotate"], gen))
    cos, sin = torch.cos(angle), torch.sin(angle)
    aspect = height / width  # a rotation in pixels, written in the [-1, 1] coordinates of each axis
    theta = torch.stack([torch.stack([w * cos, -w * sin * aspect, cx], 1),
                         torch.stack([h * sin / aspect, h * cos, cy], 1)], 1)
    grid = F.affine_grid(runtime.to_device(theta.to(images.dtype), images.device), list(images.shape),
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _colour(images: Tensor, s: dict[str, Any], mean: Any, std: Any, gen: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation factors in [1 - x, 1 + x] per image, on the pixel
    values in [0, 1] behind the normalised batch (as torchvision's ColorJitter)."""
    n = len(images)
    view = (1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(view)
    sd = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(view)
    x = images * sd + m

    def factor(key: str) -> Tensor:
        draws = _uniform(n, 1 - s[key], 1 + s[key], gen).to(images.dtype)
        return runtime.to_device(draws, images.device).view(-1, 1, 1, 1)

    def grey(x: Tensor) -> Tensor:
        if x.shape[1] != 3:
            return x.mean(1, keepdim=True)
        return 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]  # no weights tensor to copy each step

    if s["brightness"]:
        x = (x * factor("brightness")).clamp(0, 1)
    if s["contrast"]:
        x = torch.lerp(grey(x).mean((2, 3), keepdim=True), x, factor("contrast")).clamp(0, 1)
    if s["saturation"]:
        x = torch.lerp(grey(x), x, factor("saturation")).clamp(0, 1)
    return (x - m) / sd


def _mix(images: Tensor, labels: Tensor, s: dict[str, Any], num_classes: int, gen: torch.Generator,
         rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Mixup (a blend of two images) or cutmix (a box of one pasted into the other), the
    partner a shuffle of the batch, the share lam ~ Beta(alpha, alpha); with both set, each
    batch takes one of them at even odds. The targets mix the one-hot labels in the same shares."""
    use_cutmix = s["cutmix"] and (not s["mixup"] or rng.random() < 0.5)
    lam = float(rng.beta(s["cutmix"], s["cutmix"]) if use_cutmix else rng.beta(s["mixup"], s["mixup"]))
    partner = runtime.to_device(torch.randperm(len(images), generator=gen), images.device)
    if use_cutmix:
        height, width = images.shape[2:]
        cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
        top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
        images = images.clone()
        images[:, :, top:top + cut_h, left:left + cut_w] = images[partner, :, top:top + cut_h, left:left + cut_w]
        lam = 1 - cut_h * cut_w / (height * width)  # the share the pasted box really took
    else:
        images = torch.lerp(images[partner], images, lam)
    one_hot = F.one_hot(labels, num_classes).to(images.dtype)
    return images, torch.lerp(one_hot[partner], one_hot, lam)
