"""Image files -> uint8 tensors laid out as the dataset stores its samples (C, H, W).

One decoder for every image that enters from outside the datasets torchvision parses, so
a photo given to cnn-predict becomes exactly what the model saw in training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cnn_cli.errors import UserError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode that yields them


class Unreadable(Exception):
    """A file that cannot be decoded as an image (damaged, truncated, not an image at all)."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, sorted; symlinked folders are not followed
    (no loops), and only regular files are taken (a pipe named x.png would block the read)."""
    found = [Path(top) / name for top, _, names in os.walk(folder) for name in names]
    return sorted(p for p in found if is_image(p) and p.is_file())


def decode(path: Path, shape: Sequence[int]) -> Tensor:
    """Read one image as uint8 (C, H, W) for a model trained on samples of `shape`: greyscale or
    RGB as the dataset's channels, the phone's EXIF rotation applied, 16-bit pixels scaled to
    8. A size other than the dataset's is an error: the datasets so far have no resize policy,
    and a silent resize would change what the model sees."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    channels, *size = shape
    if len(size) != 2 or channels not in _MODES:
        raise UserError(f"{path}: the model takes samples of shape {list(shape)}, which no image file has; "
                        "give a .npy file of samples instead")
    try:
        with Image.open(path) as image:
            _check_size(path, image.size, size, sorted)  # before decoding a single pixel (or a bomb's)
            image = ImageOps.exif_transpose(image)
            _check_size(path, image.size, size, tuple)
            if image.mode.startswith("I;16"):
                image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
            pixels = np.asarray(image.convert(_MODES[channels]))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise Unreadable(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
    tensor = torch.from_numpy(pixels.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _check_size(path: Path, width_height: tuple[int, int], size: Sequence[int], compare=tuple) -> None:
    if compare(width_height[::-1]) != compare(size):
        h, w = size
        raise UserError(f"{path} is {width_height[0]}x{width_height[1]} (width x height) but the model takes {w}x{h} "
                        f"images and its dataset has no resize policy; resize the image to {w}x{h}")
