"""The MNIST family's IDX files read with numpy, so that a run on files already there never
imports torchvision (a second or more of start-up, docs/performance.md). Anything unusual
(a missing, short or odd file) returns None, and torchvision's reader takes over: it
downloads, parses and names the broken file, as before."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

# torchvision's names for MNIST's and FashionMNIST's unpacked files, in <root>/<Class>/raw/
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these files use


def read_array(path: Path) -> np.ndarray | None:
    """The uint8 array an IDX file holds, or None if it is not a whole IDX file of bytes."""
    try:
        with path.open("rb") as file:
            magic = file.read(4)
            if len(magic) < 4 or magic[:3] != bytes([0, 0, _UBYTE]):
                return None
            sizes = file.read(4 * magic[3])
            if len(sizes) < 4 * magic[3]:
                return None
            shape = struct.unpack(f">{magic[3]}I", sizes)
            values = np.fromfile(file, np.uint8)  # read once, straight into a writable array
    except OSError:
        return None
    return values.reshape(shape) if len(values) == math.prod(shape) else None


def read_splits(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Train and test images (N, 1, H, W) uint8 and labels (N,) int64 from the four files in
    `folder`, or None unless all four are there and agree."""
    arrays = [read_array(folder / name) for name in FILES]
    if any(a is None for a in arrays):
        return None
    train_x, train_y, test_x, test_y = arrays
    for images, labels in ((train_x, train_y), (test_x, test_y)):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            return None
    return (torch.from_numpy(train_x).unsqueeze(1), torch.from_numpy(train_y).long(),
            torch.from_numpy(test_x).unsqueeze(1), torch.from_numpy(test_y).long())
