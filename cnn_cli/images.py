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

from cnn_cli.errors import UserError, first_line

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_MODES = {1: "L", 3: "RGB"}  # channels -> the PIL mode that yields them


class Unreadable(Exception):
    """A file that cannot be decoded as an image (damaged, truncated, not an image at all)."""


def is_image(path: Path) -> bool:
    return path.suffix.lower() in EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """Every image file under `folder`, recursively, sorted; symlinked folders are not followed
    (no loops), and only regular files are taken (a pipe named x.png would block the read).
    Each folder is listed once, and a file is told from a folder by the listing's own entry
    type, with no stat call per file (a tree of 100,000 images on a network disk)."""
    found, folders = [], [folder]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(Path(entry.path))
                    elif is_image(Path(entry.name)) and entry.is_file():
                        found.append(Path(entry.path))
        except OSError:  # a folder that cannot be listed holds nothing we can read (as os.walk skips it)
            continue
    return sorted(found)


RESIZE = ("shorter_side_then_center_crop", "stretch", "pad")  # dataset.resize: how an image of another size fits


def decode(path: Path, shape: Sequence[int], resize: str | None = None) -> Tensor:
    """Read one image as uint8 (C, H, W) for a model trained on samples of `shape`, decoded in
    full as the preprocessing contract says (cnn_cli/contract.py)."""
    channels = shape[0]
    pixels = decode_array(path, shape, resize)
    tensor = torch.from_numpy(pixels)
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def decode_array(path: Path, shape: Sequence[int], resize: str | None = None, draft: bool = False) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3): greyscale or RGB as the dataset's channels (alpha
    dropped, palette expanded), the phone's EXIF rotation applied, 16-bit pixels scaled to 8,
    brought to H x W by the dataset's `resize` policy. Without one, a size other than the
    dataset's is an error: a silent resize would change what the model sees. The one decoder
    for the image-folder cache and cnn-predict alike; `draft` (the cache's, for speed) lets a
    JPEG decode at a reduced scale, which the contract cnn-predict follows does not."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    channels, *size = shape
    if len(size) != 2 or channels not in _MODES:
        raise UserError(f"{path}: the model takes samples of shape {list(shape)}, which no image file has; "
                        "give a .npy file of samples instead")
    try:
        with Image.open(path) as image:
            if resize is None:
                _check_size(path, image.size, size, sorted)  # before decoding a single pixel (or a bomb's)
            elif draft:  # JPEG: decode at the smallest power-of-2 scale still at least as large as needed
                image.draft(_MODES[channels], (max(size), max(size)))
            stored = image.size
            image = ImageOps.exif_transpose(image)
            if resize is None:
                _check_size(path, image.size, size, tuple, stored)
            if image.mode.startswith("I;16"):
                image = Image.fromarray((np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8))
            image = image.convert(_MODES[channels])
            if resize is not None and image.size != (size[1], size[0]):
                image = _fit(image, size, resize)
            pixels = np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise Unreadable(first_line(err)) from None
    return pixels


def _fit(image, size: Sequence[int], resize: str):
    """`image` brought to size (H, W): scaled so its shorter side fits, then the middle cut out;
    or stretched; or scaled to fit whole and centred on black."""
    from PIL import Image

    h, w = size
    if resize == "stretch":
        return image.resize((w, h), Image.Resampling.BILINEAR)
    scale = (max if resize == "shorter_side_then_center_crop" else min)(h / image.height, w / image.width)
    scaled = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                          Image.Resampling.BILINEAR)
    if resize == "shorter_side_then_center_crop":
        left, top = (scaled.width - w) // 2, (scaled.height - h) // 2
        return scaled.crop((left, top, left + w, top + h))
    canvas = Image.new(image.mode, (w, h))
    canvas.paste(scaled, ((w - scaled.width) // 2, (h - scaled.height) // 2))
    return canvas


def upright_size(image) -> tuple[int, int]:
    """(width, height) as the image is shown: its EXIF orientation 5 to 8 turns it on its side."""
    turned = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
    return image.size[::-1] if turned else image.size


_ORIENTATION = 0x0112  # the EXIF tag a phone sets instead of rotating the pixels


def _check_size(path: Path, width_height: tuple[int, int], size: Sequence[int], compare=tuple,
                stored: tuple[int, int] | None = None) -> None:
    if compare(width_height[::-1]) != compare(size):
        h, w = size
        turned = f" once turned upright by its EXIF orientation (stored {stored[0]}x{stored[1]})" \
            if stored is not None and stored != width_height else ""
        raise UserError(f"{path} is {width_height[0]}x{width_height[1]} (width x height){turned} but the model takes "
                        f"{w}x{h} images and its dataset has no resize policy; resize the image to {w}x{h}")
