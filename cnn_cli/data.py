"""Datasets -> uint8 tensors on the training device -> normalised, augmented batches.

Each kind of data is a source (cnn_cli/sources.py) that resolves and reads it; after that
every sample lives in one tensor on the device, and batches are cut, converted, normalised
and augmented as whole-batch tensor ops there (airbench-style): no per-sample PIL
transforms, no worker processes, and never a float copy of the whole set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor

from cnn_cli import augment as augment_mod, bounds, imagefolder, sources
from cnn_cli.errors import UserError


@dataclass
class Split:
    """One split: samples (N, C, L), (N, C, H, W) or (N, C, D, H, W), uint8 pixels or float32
    readings, and int64 labels (N,), on the training device."""

    images: Tensor | imagefolder.MappedSamples  # mapped: a cache larger than memory, read batch by batch
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split
    name: str  # the dataset actually used: "mnist", or "mnist_sample (fallback)"
    mean: Tensor  # (C,), on the device
    std: Tensor
    skipped_files: int | None = None  # dataset=imagefolder: unreadable files left out
    where: str = ""  # where the samples were read: a folder, the bundled file, "random pixels"
    fallback: bool = False  # the bundled MNIST sample stood in for missing files

    @property
    def sample_rank(self) -> int:
        """Axes of one sample: 2 for (C, L), 3 for (C, H, W), 4 for (C, D, H, W)."""
        return self.test.images.dim() - 1


@dataclass
class Opened:
    """A resolved dataset: its source, and what resolving found in its files (read by `load`)."""

    source: sources.Source
    found: Any


def load(cfg: DictConfig, device: torch.device | str = "cpu", opened: Opened | None = None) -> Data:
    """Load cfg (a dataset config) into tensors on `device`, holding out the validation split
    (none with val_size=0: then the whole training set trains). `opened`: what `resolve`
    returned, so that the files are looked at once; resolved here if not given."""
    opened = opened or resolve(cfg)
    got = opened.source.read(cfg, opened.found, device)
    mean, std = (torch.tensor(values, device=device) for values in channel_stats(cfg))
    train, val = got.train, got.val
    if val is None:
        train, val = _hold_out(cfg, got)

    def split(images: Any, labels: Tensor) -> Split:  # a mapped split reads its batches to the device itself
        return Split(images.to(device) if isinstance(images, Tensor) else images, labels.to(device))

    return Data(split(*train), split(*val), split(*got.test), got.name, mean, std, got.skipped, got.where,
                got.fallback)


def _hold_out(cfg: DictConfig, got: sources.Samples) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(train, val): dataset.val_size samples drawn out of the training set with split_seed."""
    (train_x, train_y), test_y, name = got.train, got.test[1], got.name
    _check_contents(name, cfg.num_classes, (train_y, "training"), (test_y, "test"))
    if tuple(train_x.shape[1:]) != tuple(cfg.input_shape):
        raise UserError(f"dataset.input_shape is {list(cfg.input_shape)} but the {name} samples are "
                        f"{list(train_x.shape[1:])}; fix dataset.input_shape")
    val_size = cfg.val_size if not got.fallback else min(cfg.val_size, len(train_y) // 8)
    if not 0 <= val_size < len(train_y):
        raise UserError(f"dataset.val_size={cfg.val_size} must be between 0 and {len(train_y) - 1} "
                        f"(the {name} training set has {len(train_y)} samples)")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    # val_size=0: train_idx is 0, 1, ..., N - 1, so the whole set as it is, without a copy
    train = (train_x, train_y) if not val_size else (train_x[train_idx], train_y[train_idx])
    return train, (train_x[val_idx], train_y[val_idx])


def channel_stats(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """The per-channel mean and std a dataset config normalises with (dataset=random may
    leave them null: its uniform pixels' then)."""
    return sources.of(cfg).stats(cfg)


def resolve(cfg: DictConfig) -> Opened:
    """Fill in what a dataset config may leave to its files (dataset=imagefolder: the input
    shape, classes and normalisation, decoding the images once; dataset=arrays: the same from
    the arrays) or to its size (dataset=random: classes named 0, 1, ...), then check it. The
    one look at the files before they are read: `load` takes what it returns."""
    source = sources.of(cfg)
    source.check(cfg)
    found = source.resolve(cfg)
    check(cfg)
    return Opened(source, found)


def check(cfg: DictConfig) -> None:
    """Everything about a (resolved) dataset config that can be checked without its files, so
    that cnn-summary refuses what cnn-train would: counts, mean/std per channel, augmentation
    that fits the samples' rank."""
    source = sources.of(cfg)
    for key in ("input_shape", "num_classes", "classes"):
        if cfg[key] is None:  # dataset=imagefolder and dataset=arrays have filled them in by now
            raise UserError(f"dataset.{key}=null: give it (only {sources.of_own_files()} read it off their files)")
    for key, unset in sources.OPTIONAL.items():
        if key not in source.reads and cfg.get(key, unset) != unset:
            why = ("has its own images (use trainer.limit_train_batches to train on fewer)" if key == "num_images"
                   else "does not read it: leave it out")
            raise UserError(f"dataset.{key} is only for {sources.readers(key)}; {cfg.name} {why}")
    shape = list(cfg.input_shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise UserError(f"dataset.input_shape={shape}: give one sample's shape with the channels first: [C, L] "
                        "(1-D), [C, H, W] (2-D) or [C, D, H, W] (3-D), every size >= 1")
    sources.check_num_classes(cfg.num_classes)
    bounds.check_seed("dataset.split_seed", cfg.split_seed)
    if len(cfg.classes) != cfg.num_classes:
        raise UserError(f"dataset.classes names {len(cfg.classes)} classes but dataset.num_classes is "
                        f"{cfg.num_classes}")
    if not source.fractions and (isinstance(cfg.val_size, bool) or not isinstance(cfg.val_size, int)):
        raise UserError(f"dataset.val_size={cfg.val_size} must be a count of images (fractions: "
                        f"{sources.of_own_files()})")
    if cfg.val_size < 0:
        raise UserError(f"dataset.val_size={cfg.val_size} must be >= 0 (0: train on the whole training set, "
                        "no validation)")
    for key in ("mean", "std"):
        if cfg[key] is None and not source.drawn:
            raise UserError(f"dataset.{key}=null is only for dataset=random (uniform pixels); give one value per "
                            f"channel of the training set, e.g. dataset.{key}=[{', '.join(['0.5'] * shape[0])}]")
    mean, std = source.stats(cfg)
    if not len(mean) == len(std) == shape[0]:
        raise UserError(f"dataset.mean and dataset.std need one value per channel ({shape[0]}); got {len(mean)} and "
                        f"{len(std)}" + "; for dataset=random leave them out (null)" * source.drawn)
    if any(s <= 0 for s in std):
        raise UserError(f"dataset.std={std}: every value must be > 0 (it divides)")
    augment = cfg.augment
    if not 0 <= augment.crop_padding <= min(shape[1:]):  # more pads crops of nothing, and memory by its square
        raise UserError(f"dataset.augment.crop_padding={augment.crop_padding} must be from 0 to the samples' "
                        f"smallest side ({min(shape[1:])}); a few pixels, e.g. 4 for 32x32 images")
    if augment.flip and len(shape) == 2:
        raise UserError("dataset.augment.flip=true mirrors images left to right, but the samples are 1-D signals "
                        f"({' x '.join(map(str, shape))}: channels x steps), where that would reverse time; "
                        "set dataset.augment.flip=false")
    augment_mod.check(augment, shape)


def _check_contents(name: str, num_classes: int, *splits: tuple[Tensor, str]) -> None:
    """Once, at load: every label names a class, so nothing fails mid-epoch."""
    for labels, split in splits:
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise UserError(f"dataset '{name}': the {split} labels run from {int(labels.min())} to "
                            f"{int(labels.max())}, outside 0 to {num_classes - 1} (dataset.num_classes="
                            f"{num_classes}); fix the labels or dataset.num_classes")


# ---------------------------------------------------------------------------- batches


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """A batch (N, C, ...) of any rank -> float32 with the dataset's per-channel mean and std.

    uint8 samples are pixels and scaled to [0, 1] first: (x / 255 - mean) / std. Float
    samples (sensor readings such as basic_motions) are taken as they are: (x - mean) / std.
    `mean` and `std` hold one value per channel (C,), as a tensor or a list.
    """
    return normalizer(mean, std, images.dtype, images.dim(), images.device)(images)


def normalizer(mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, dtype: torch.dtype, dims: int,
               device: torch.device) -> Callable[[Tensor], Tensor]:
    """normalize() for batches of this dtype and rank, its factors worked out once, so that
    each batch of a loop is two passes and no small tensor op (each one a kernel launch on a GPU)."""
    shape = (1, -1) + (1,) * (dims - 2)  # broadcast over the batch and every spatial axis
    mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=device).view(shape)
    scale = 1 / (std * 255) if dtype == torch.uint8 else 1 / std
    shift = mean / std
    # x * scale - mean / std, in place on the converted batch: two passes instead of three, no
    # second batch-sized tensor (measured twice as fast as addcmul's broadcast on the CPU)
    return lambda images: images.to(torch.float32, copy=True).mul_(scale).sub_(shift)  # copy: a float split stays


@dataclass
class EpochPlan:
    """Everything random about one epoch, drawn up front from (seed, epoch): the sample
    order and each position's crop offset and flip. A run resumed mid-epoch replays it."""

    order: Tensor
    offsets: Tensor | None  # (N, spatial axes) crop offsets into the padded sample
    flips: Tensor | None  # (N,) bool


def epoch_plan(n: int, seed: int, epoch: int, crop_padding: int = 0, flip: bool = False,
               spatial_axes: int = 2) -> EpochPlan:
    """The plan for n samples with `spatial_axes` axes each (1: C x L, 2: C x H x W, 3: C x D x H x W)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen)
    offsets = torch.randint(0, 2 * crop_padding + 1, (n, spatial_axes), generator=gen) if crop_padding else None
    flips = torch.rand(n, generator=gen) < 0.5 if flip else None
    return EpochPlan(order, offsets, flips)


def random_crop(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Zero-pad every spatial axis by `padding`, then cut each sample back to size at its own
    offset (one per axis): a random shift for signals, images and volumes alike."""
    n, c, *sizes = images.shape
    rank = images.dim()
    padded = F.pad(images, (padding,) * (2 * len(sizes)))
    device = images.device

    def at(values: Tensor, *axes: int) -> Tensor:  # values viewed along `axes` of the batch, broadcastable
        shape = [1] * rank
        for axis, size in zip(axes, values.shape):
            shape[axis] = size
        return values.reshape(shape)

    index = [at(torch.arange(n, device=device), 0), at(torch.arange(c, device=device), 1)]
    for axis, size in enumerate(sizes):  # each sample's window along this axis: (n, size)
        index.append(at(offsets[:, axis, None] + torch.arange(size, device=device), 0, axis + 2))
    return padded[tuple(index)]


def flip_where(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror left-right (the last axis) exactly the samples whose mask is true."""
    return torch.where(mask.view(-1, *[1] * (images.dim() - 1)), images.flip(-1), images)


def train_batches(data: Data, batch_size: int, plan: EpochPlan, crop_padding: int = 0, start: int = 0,
                  stop: int | None = None, rank: int = 0, world: int = 1) -> Iterator[tuple[Tensor, Tensor]]:
    """Normalised, augmented training batches in the plan's order, from batch `start` to
    `stop`. A last batch smaller than batch_size is dropped (the next epoch reshuffles).
    With `world` processes each batch is split evenly and this one gets part `rank`, so
    together they train on exactly the batches one process would."""
    split = data.train
    count = num_train_batches(len(split), batch_size)
    part = batch_size // world
    # the plan goes to the device once an epoch: a copy from the host to a GPU each step would first
    # wait for every step queued before it (CUDA syncs the stream before a copy from pageable memory)
    order, offsets, flips = (None if t is None else t.to(split.labels.device)
                             for t in (plan.order, plan.offsets, plan.flips))
    mapped = not isinstance(split.images, Tensor)  # reads just the samples asked for, found on the host
    to_float = normalizer(data.mean, data.std, split.images.dtype, split.images.dim(), split.labels.device)
    for b in range(start, count if stop is None else min(stop, count)):
        pos = slice(b * batch_size + rank * part, b * batch_size + (rank + 1) * part)
        idx = order[pos]
        images = split.images[plan.order[pos] if mapped else idx]  # on the device either way
        if offsets is not None:
            images = random_crop(images, offsets[pos], crop_padding)
        if flips is not None:
            images = flip_where(images, flips[pos])
        yield to_float(images), split.labels[idx]


def num_train_batches(n: int, batch_size: int) -> int:
    return max(1, n // batch_size)


def shard(split: Split, rank: int, world: int) -> Split:
    """This process's contiguous part of a split, for evaluation spread over processes."""
    if world == 1:  # all of it (a mapped split stays mapped)
        return split
    bounds = [len(split) * r // world for r in range(world + 1)]
    part = slice(bounds[rank], bounds[rank + 1])
    return Split(split.images[part], split.labels[part])


def eval_batches(data: Data, split: Split, batch_size: int,
                 limit: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The whole split in order, the last partial batch included: no sample is lost."""
    count = math.ceil(len(split) / batch_size)
    to_float = normalizer(data.mean, data.std, split.images.dtype, split.images.dim(), split.labels.device)
    for b in range(count if limit is None else min(limit, count)):
        pos = slice(b * batch_size, (b + 1) * batch_size)
        yield to_float(split.images[pos]), split.labels[pos]
