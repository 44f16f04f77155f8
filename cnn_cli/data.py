"""Datasets -> uint8 tensors on the training device -> normalised, augmented batches.

torchvision downloads and parses; after that every image lives in one uint8 tensor on the
device, and batches are cut, converted, normalised and augmented as whole-batch tensor
ops there (airbench-style): no per-sample PIL transforms, no worker processes, and never
a float copy of the whole set.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from cnn_cli.errors import UserError

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

log = logging.getLogger(__name__)

# Only these torchvision.datasets classes can be named in a config (configs travel inside
# shared checkpoints). torchvision is imported only when one is opened: its import costs
# 2.8 s, which a run on the bundled sample or a config error need not pay.
SOURCES = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
SAMPLE = "sample"  # the 5,000 MNIST digits shipped in cnn_cli/assets
RANDOM = "random"  # random pixels and labels: times an architecture with no files at all
FALLBACK_NAME = "mnist_sample (fallback)"


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,), on the training device."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    name: str  # the dataset actually used: "mnist", or "mnist_sample (fallback)"
    mean: Tensor  # (1, C, 1, 1), on the device
    std: Tensor


def load(cfg: DictConfig, device: torch.device | str = "cpu") -> Data:
    """Load cfg (a dataset config) into tensors on `device`, holding out the validation split."""
    channels = cfg.input_shape[0]
    if not len(cfg.mean) == len(cfg.std) == channels:
        raise UserError(f"dataset.mean and dataset.std need one value per channel ({channels}); "
                        f"got {len(cfg.mean)} and {len(cfg.std)}")
    if len(cfg.classes) != cfg.num_classes:
        raise UserError(f"dataset.classes names {len(cfg.classes)} classes but dataset.num_classes is {cfg.num_classes}")
    train_x, train_y, test_x, test_y, name = _read(cfg)
    _check_contents(name, cfg.num_classes, (train_x, train_y, "training"), (test_x, test_y, "test"))
    if tuple(train_x.shape[1:]) != tuple(cfg.input_shape):
        raise UserError(f"dataset.input_shape is {list(cfg.input_shape)} but the {name} images are "
                        f"{list(train_x.shape[1:])}; fix dataset.input_shape")
    val_size = cfg.val_size if name != FALLBACK_NAME else min(cfg.val_size, len(train_y) // 8)
    if not 0 < val_size < len(train_y):
        raise UserError(f"dataset.val_size={cfg.val_size} must be between 1 and {len(train_y) - 1} "
                        f"(the {name} training set has {len(train_y)} images)")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    def split(images: Tensor, labels: Tensor) -> Split:
        return Split(images.to(device), labels.to(device))

    def per_channel(values) -> Tensor:
        return torch.tensor(list(values), dtype=torch.float32, device=device).view(1, -1, 1, 1)

    return Data(split(train_x[train_idx], train_y[train_idx]), split(train_x[val_idx], train_y[val_idx]),
                split(test_x, test_y), name, per_channel(cfg.mean), per_channel(cfg.std))


def _check_contents(name: str, num_classes: int, *splits: tuple[Tensor, Tensor, str]) -> None:
    """Once, at load: pixels are bytes and labels name a class, so nothing fails mid-epoch."""
    for images, labels, split in splits:
        if images.dtype != torch.uint8:
            raise UserError(f"dataset '{name}': the {split} images are {str(images.dtype).removeprefix('torch.')}, "
                            "not 8-bit pixels (uint8); convert the files to 0-255 integers")
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise UserError(f"dataset '{name}': the {split} labels run from {int(labels.min())} to "
                            f"{int(labels.max())}, outside 0 to {num_classes - 1} (dataset.num_classes="
                            f"{num_classes}); fix the labels or dataset.num_classes")


def _read(cfg: DictConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """Train and test images (uint8, N x C x H x W) and labels, from torchvision or the sample."""
    if cfg.source == SAMPLE:
        return (*_read_sample(), cfg.name)
    if cfg.source == RANDOM:
        return (*_read_random(cfg), cfg.name)
    if cfg.source not in SOURCES:
        raise UserError(f"dataset.source '{cfg.source}' is not one of {', '.join([*SOURCES, SAMPLE, RANDOM])}")
    cls = _source(cfg.source)
    if not cfg.root:
        raise UserError(f"dataset.root is empty; give the folder that holds (or will hold) {cfg.source}/, e.g. dataset.root=data")
    root = Path(cfg.root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={cfg.root} is a file, not a folder; point it at the folder that holds {cfg.source}/")
    try:
        train, test = _open(cls, root, cfg.download)
    except _Missing as missing:
        if cfg.get("fallback", False) and cfg.source == "MNIST":  # the bundled sample is MNIST
            _warn_fallback(cfg, root, missing)
            return (*_read_sample(), FALLBACK_NAME)
        raise UserError(f"dataset '{cfg.name}': {missing} in {_folder(cls, root)}; expected "
                        f"{', '.join(_expected_files(cls))} (torchvision's layout). Run once with network "
                        "(dataset.download=true) or copy them there, or set dataset.root") from None
    for split in (train, test):
        if len(split.data) != len(split.targets):
            raise UserError(f"dataset '{cfg.name}': the {'train' if split.train else 'test'} files in "
                            f"{_folder(cls, root)} hold {len(split.data)} images but {len(split.targets)} labels; "
                            "one of them is from another dataset or damaged: delete them and download again")
    return (*_tensors(train), *_tensors(test), cfg.name)


def _source(name: str) -> type[VisionDataset]:
    from torchvision import datasets

    return getattr(datasets, name)


def _is_mnist_like(cls: type[VisionDataset]) -> bool:
    """MNIST and FashionMNIST: IDX files in <root>/<class>/raw (CIFAR: pickled batches)."""
    from torchvision.datasets import MNIST

    return issubclass(cls, MNIST)


class _Missing(Exception):
    """The files are not there and could not be downloaded."""


def _open(cls: type[VisionDataset], root: Path, download: bool):
    """Open both splits with torchvision, downloading if allowed; name a broken file."""
    if not _present(cls, root):
        if not download:
            raise _Missing("no files (dataset.download=false)")
        try:
            cls(str(root), train=True, download=True)
        except (OSError, RuntimeError) as err:  # no network, refused, DNS failure ...
            raise _Missing(f"no files, and the download failed ({str(err).strip().splitlines()[-1]})") from None
    try:
        return cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except Exception:  # torchvision raises whatever the parse or its md5 check trips on
        broken = _broken_file(cls, root)
        if broken is None:
            raise
        raise UserError(f"dataset file {broken} is truncated or corrupted; delete it and download again "
                        "(dataset.download=true) or copy a good one") from None


def _folder(cls: type[VisionDataset], root: Path) -> Path:
    if _is_mnist_like(cls):
        return root / cls.__name__ / "raw"
    return root / cls.base_folder


def _expected_files(cls: type[VisionDataset]) -> list[str]:
    if _is_mnist_like(cls):
        return [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _present(cls: type[VisionDataset], root: Path) -> bool:
    return all((_folder(cls, root) / name).is_file() for name in _expected_files(cls))


def _broken_file(cls: type[VisionDataset], root: Path) -> Path | None:
    """The first file that torchvision cannot use: a bad IDX file, or a CIFAR md5 mismatch."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import check_integrity

    folder = _folder(cls, root)
    if _is_mnist_like(cls):
        for name in _expected_files(cls):
            try:
                tensor = read_sn3_pascalvincent_tensor(str(folder / name), strict=False)
            except Exception:
                return folder / name
            if tensor.ndim != (3 if "-images-" in name else 1):  # e.g. an images file under a labels name
                return folder / name
        return None
    for name, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]:
        if not check_integrity(str(folder / name), md5):
            return folder / name
    return None


def _tensors(dataset: VisionDataset) -> tuple[Tensor, Tensor]:
    """torchvision's .data / .targets as uint8 (N, C, H, W) and int64 (N,)."""
    images = dataset.data
    if isinstance(images, np.ndarray):  # CIFAR: N x H x W x C numpy
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    else:  # MNIST family: N x H x W tensor
        images = images.unsqueeze(1)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _read_sample() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    path = resources.files("cnn_cli") / "assets" / "mnist_sample.npz"
    with resources.as_file(path) as file, np.load(file) as npz:
        return (torch.from_numpy(npz["train_images"]).unsqueeze(1), torch.from_numpy(npz["train_labels"]).long(),
                torch.from_numpy(npz["test_images"]).unsqueeze(1), torch.from_numpy(npz["test_labels"]).long())


def _read_random(cfg: DictConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """dataset.num_images = [train, test] random images of dataset.input_shape and random
    labels, the same every time (seed 0)."""
    sizes = list(cfg.num_images or [])
    if len(sizes) != 2 or min(sizes) < 1:
        raise UserError(f"dataset.num_images={sizes} must be two counts, [train, test], e.g. [50000, 10000]")
    gen = torch.Generator().manual_seed(0)
    splits = [(torch.randint(0, 256, (n, *cfg.input_shape), dtype=torch.uint8, generator=gen),
               torch.randint(0, cfg.num_classes, (n,), generator=gen)) for n in sizes]
    return (*splits[0], *splits[1])


def _warn_fallback(cfg: DictConfig, root: Path, missing: _Missing) -> None:
    rule = "=" * 78
    log.warning(
        "\n%s\nFull %s could not be found or downloaded: %s.\n  looked in: %s\n"
        "This run trains on the bundled 5,000-digit MNIST sample instead (recorded as '%s').\n"
        "Put the files there or set dataset.root=...; dataset.fallback=false makes this an error.\n%s",
        rule, cfg.source, missing, _folder(_source(cfg.source), root.resolve()), FALLBACK_NAME, rule,
    )


# ---------------------------------------------------------------------------- batches


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 batch -> float batch with the dataset's mean and std: (x / 255 - mean) / std."""
    return (images.float().div_(255) - mean).div_(std)


@dataclass
class EpochPlan:
    """Everything random about one epoch, drawn up front from (seed, epoch): the sample
    order and each position's crop offset and flip. A run resumed mid-epoch replays it."""

    order: Tensor
    offsets: Tensor | None  # (N, 2) crop offsets into the padded image
    flips: Tensor | None  # (N,) bool


def epoch_plan(n: int, seed: int, epoch: int, crop_padding: int = 0, flip: bool = False) -> EpochPlan:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen)
    offsets = torch.randint(0, 2 * crop_padding + 1, (n, 2), generator=gen) if crop_padding else None
    flips = torch.rand(n, generator=gen) < 0.5 if flip else None
    return EpochPlan(order, offsets, flips)


def random_crop(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Zero-pad by `padding`, then cut each image back to size at its own (row, column) offset."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    rows = offsets[:, 0, None] + torch.arange(h, device=images.device)  # (n, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=images.device)  # (n, w)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def flip_where(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right exactly the images whose mask is true."""
    return torch.where(mask[:, None, None, None], images.flip(-1), images)


def train_batches(data: Data, batch_size: int, plan: EpochPlan, crop_padding: int = 0, start: int = 0,
                  stop: int | None = None, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised, augmented training batches in the plan's order, from batch `start` to
    `stop`. A last batch smaller than batch_size is dropped (the next epoch reshuffles).
    With `world` processes each batch is split evenly and this one gets part `rank`, so
    together they train on exactly the batches one process would."""
    split = data.train
    count = num_train_batches(len(split), batch_size)
    part = batch_size // world
    for b in range(start, count if stop is None else min(stop, count)):
        pos = slice(b * batch_size + rank * part, b * batch_size + (rank + 1) * part)
        idx = plan.order[pos].to(split.labels.device)
        images = split.images[idx]
        if plan.offsets is not None:
            images = random_crop(images, plan.offsets[pos].to(images.device), crop_padding)
        if plan.flips is not None:
            images = flip_where(images, plan.flips[pos].to(images.device))
        yield normalize(images, data.mean, data.std), split.labels[idx]


def num_train_batches(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def shard(split: Split, rank: int, world: int) -> Split:
    """This process's contiguous part of a split, for evaluation spread over processes."""
    bounds = [len(split) * r // world for r in range(world + 1)]
    part = slice(bounds[rank], bounds[rank + 1])
    return Split(split.images[part], split.labels[part])


def eval_batches(data: Data, split: Split, batch_size: int,
                 limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole split in order, the last partial batch included: no sample is lost."""
    count = math.ceil(len(split) / batch_size)
    for b in range(count if limit is None else min(limit, count)):
        pos = slice(b * batch_size, (b + 1) * batch_size)
        yield normalize(split.images[pos], data.mean, data.std), split.labels[pos]
