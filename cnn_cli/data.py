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
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor
from cnn_cli import augment as augment_mod, bounds, idx, imagefolder
from cnn_cli.errors import DataMissing, UserError

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

log = logging.getLogger(__name__)

# Only these torchvision.datasets classes can be named in a config (configs travel inside
# shared checkpoints). torchvision is imported only when one is opened: its import is a
# large part of start-up (docs/performance.md), which a run on the bundled sample or a
# config error need not pay.
SOURCES = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")
SAMPLE = "sample"  # the 5,000 MNIST digits shipped in cnn_cli/assets
BASIC_MOTIONS = "basic_motions"  # 80 smartwatch IMU recordings (6 x 100), shipped in cnn_cli/assets
BUNDLED = {SAMPLE: "mnist_sample.npz", BASIC_MOTIONS: "basic_motions.npz"}
RANDOM = "random"  # random pixels and labels: times an architecture with no files at all
IMAGEFOLDER = imagefolder.SOURCE  # your own images, DIR/<class>/*.png, decoded once into a cache
# settings only dataset=imagefolder reads, and their values elsewhere: set on another dataset they would do nothing
IMAGEFOLDER_ONLY = {"test_size": 0, "resize": None, "cache_dir": None, "workers": None, "max_memory_gb": None,
                    "skip_bad": True}
FLOAT_SOURCES = (BASIC_MOTIONS,)  # samples are float32 readings; every other source's are uint8 pixels
FALLBACK_NAME = "mnist_sample (fallback)"
MAX_CLASSES = 100_000  # far above any real label set (ImageNet-21k has 21,841), so a typo cannot fill memory


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

    @property
    def sample_rank(self) -> int:
        """Axes of one sample: 2 for (C, L), 3 for (C, H, W), 4 for (C, D, H, W)."""
        return self.test.images.dim() - 1


def load(cfg: DictConfig, device: torch.device | str = "cpu") -> Data:
    """Load cfg (a dataset config) into tensors on `device`, holding out the validation split
    (none with val_size=0: then the whole training set trains)."""
    opened = resolve(cfg)
    mean, std = (torch.tensor(values, device=device) for values in channel_stats(cfg))
    if opened is not None:  # dataset=imagefolder: split by the tree or stratified, and maybe mapped: its own reader
        splits, skipped = imagefolder.read(cfg, device, *opened)
        return Data(*(Split(*split) for split in splits), cfg.name, mean, std, skipped, str(opened[0].root))
    train_x, train_y, test_x, test_y, name, where = _read(cfg)
    _check_contents(name, cfg.num_classes, (train_y, "training"), (test_y, "test"))
    if tuple(train_x.shape[1:]) != tuple(cfg.input_shape):
        raise UserError(f"dataset.input_shape is {list(cfg.input_shape)} but the {name} samples are "
                        f"{list(train_x.shape[1:])}; fix dataset.input_shape")
    val_size = cfg.val_size if name != FALLBACK_NAME else min(cfg.val_size, len(train_y) // 8)
    if not 0 <= val_size < len(train_y):
        raise UserError(f"dataset.val_size={cfg.val_size} must be between 0 and {len(train_y) - 1} "
                        f"(the {name} training set has {len(train_y)} samples)")
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.split_seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    def split(images: Tensor, labels: Tensor) -> Split:
        return Split(images.to(device), labels.to(device))

    # val_size=0: train_idx is 0, 1, ..., N - 1, so the whole set as it is, without a copy
    train = split(train_x, train_y) if not val_size else split(train_x[train_idx], train_y[train_idx])
    return Data(train, split(train_x[val_idx], train_y[val_idx]), split(test_x, test_y), name, mean, std, where=where)


# Pixels drawn uniformly from 0..255 scale to [0, 1], whose mean is 1/2 and std 1/sqrt(12).
UNIFORM_MEAN, UNIFORM_STD = 0.5, 0.289


def channel_stats(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """The per-channel mean and std a dataset config normalises with. dataset=random may
    leave them null: its uniform pixels then get 0.5 and 0.289 for each channel."""
    channels = cfg.input_shape[0]
    if cfg.source == RANDOM:
        return ([UNIFORM_MEAN] * channels if cfg.mean is None else list(cfg.mean),
                [UNIFORM_STD] * channels if cfg.std is None else list(cfg.std))
    return list(cfg.mean), list(cfg.std)


def resolve(cfg: DictConfig) -> tuple[imagefolder.Listing, imagefolder.Cache] | None:
    """Fill in what a dataset config may leave to its files (dataset=imagefolder: the input
    shape, classes and normalisation, decoding the images once) or to its size (dataset=random:
    classes named 0, 1, ...), then check it. Returns what dataset=imagefolder found in its
    tree (listing and cache), so that `load` reads it without a second walk."""
    opened = None
    if cfg.source == IMAGEFOLDER:
        opened = imagefolder.resolve(cfg)
    elif cfg.source == RANDOM and cfg.classes is None and cfg.num_classes is not None:
        _check_num_classes(cfg.num_classes)
        cfg.classes = [str(i) for i in range(cfg.num_classes)]
    check(cfg)
    return opened


def _check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise UserError(f"dataset.num_classes={num_classes} must be from 2 to {MAX_CLASSES:,}")


def check(cfg: DictConfig) -> None:
    """Everything about a dataset config that can be checked without its files, so that
    cnn-summary refuses what cnn-train would: counts, mean/std per channel, augmentation
    that fits the samples' rank."""
    for key in ("input_shape", "num_classes", "classes"):
        if cfg[key] is None:  # dataset=imagefolder has filled them in by now
            raise UserError(f"dataset.{key}=null: give it (only dataset=imagefolder reads it off its files)")
    if cfg.source != IMAGEFOLDER:
        for key, value in IMAGEFOLDER_ONLY.items():
            if cfg.get(key, value) != value:
                raise UserError(f"dataset.{key} is only for dataset=imagefolder; {cfg.name} does not read it: "
                                "leave it out")
    shape = list(cfg.input_shape)
    if not 2 <= len(shape) <= 4 or min(shape) < 1:
        raise UserError(f"dataset.input_shape={shape}: give one sample's shape with the channels first: [C, L] "
                        "(1-D), [C, H, W] (2-D) or [C, D, H, W] (3-D), every size >= 1")
    _check_num_classes(cfg.num_classes)
    bounds.check_seed("dataset.split_seed", cfg.split_seed)
    if len(cfg.classes) != cfg.num_classes:
        raise UserError(f"dataset.classes names {len(cfg.classes)} classes but dataset.num_classes is "
                        f"{cfg.num_classes}")
    if cfg.source != IMAGEFOLDER and (isinstance(cfg.val_size, bool) or not isinstance(cfg.val_size, int)):
        raise UserError(f"dataset.val_size={cfg.val_size} must be a count of images (fractions: dataset=imagefolder)")
    if cfg.val_size < 0:
        raise UserError(f"dataset.val_size={cfg.val_size} must be >= 0 (0: train on the whole training set, "
                        "no validation)")
    if cfg.num_images is not None and cfg.source != RANDOM:
        raise UserError(f"dataset.num_images is only for dataset=random; {cfg.name} has its own images "
                        "(use trainer.limit_train_batches to train on fewer)")
    for key in ("mean", "std"):
        if cfg[key] is None and cfg.source != RANDOM:
            raise UserError(f"dataset.{key}=null is only for dataset=random (uniform pixels); give one value per "
                            f"channel of the training set, e.g. dataset.{key}=[{', '.join(['0.5'] * shape[0])}]")
    mean, std = channel_stats(cfg)
    if not len(mean) == len(std) == shape[0]:
        raise UserError(f"dataset.mean and dataset.std need one value per channel ({shape[0]}); got {len(mean)} and "
                        f"{len(std)}" + "; for dataset=random leave them out (null)" * (cfg.source == RANDOM))
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


def _read(cfg: DictConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, str, str]:
    """Train and test samples (N x C x ...) and labels, from torchvision or the package's assets,
    with the name of what was read and where."""
    if cfg.source in BUNDLED:
        return (*_read_bundled(cfg.source), cfg.name, _bundled_file(cfg.source))
    if cfg.source == RANDOM:
        return (*_read_random(cfg), cfg.name, "random pixels (seed 0)")
    if cfg.source not in SOURCES:
        raise UserError(f"dataset.source '{cfg.source}' is not one of "
                        f"{', '.join([*SOURCES, *BUNDLED, RANDOM, IMAGEFOLDER])}")
    if not cfg.root:
        raise UserError(f"dataset.root is empty; give the folder that holds (or will hold) {cfg.source}/, e.g. "
                        "dataset.root=data")
    root = Path(cfg.root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={cfg.root} is a file, not a folder; point it at the folder that holds "
                        f"{cfg.source}/")
    if cfg.source in idx.SOURCES:  # files already there: read without torchvision
        raw = root / cfg.source / "raw"
        read = idx.read_splits(raw)
        if read is not None:
            return (*read, cfg.name, str(raw.resolve()))
    cls = _source(cfg.source)
    try:
        train, test = _open(cls, root, cfg.download)
    except _Missing as missing:
        if cfg.get("fallback", False) and cfg.source == "MNIST":  # the bundled sample is MNIST
            _warn_fallback(cfg, root, missing)
            return (*_read_bundled(SAMPLE), FALLBACK_NAME, _bundled_file(SAMPLE))
        raise DataMissing(f"dataset '{cfg.name}': {missing} in {_folder(cls, root)}; expected "
                          f"{', '.join(_expected_files(cls))} (torchvision's layout). Run once with network "
                          "(dataset.download=true) or copy them there, or set dataset.root",
                          f"{_folder(cls, root.resolve())} ({', '.join(_expected_files(cls))})") from None
    for split in (train, test):
        if len(split.data) != len(split.targets):
            raise UserError(f"dataset '{cfg.name}': the {'train' if split.train else 'test'} files in "
                            f"{_folder(cls, root)} hold {len(split.data)} images but {len(split.targets)} labels; "
                            "one of them is from another dataset or damaged: delete them and download again")
    return (*_tensors(train), *_tensors(test), cfg.name, str(_folder(cls, root.resolve())))


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
        try:
            if not download:
                raise _Missing("no files (dataset.download=false)")
            try:
                cls(str(root), train=True, download=True)
            except (OSError, RuntimeError) as err:  # no network, refused, DNS failure ...
                raise _Missing(f"no files, and the download failed ({str(err).strip().splitlines()[-1]})") from None
        except _Missing:
            _archives_from_elsewhere(cls, root)
            raise
    try:
        return cls(str(root), train=True, download=False), cls(str(root), train=False, download=False)
    except Exception:  # torchvision raises whatever the parse or its md5 check trips on
        broken = _broken_file(cls, root)
        if broken is None:
            raise
        path, problem = broken
        raise UserError(f"dataset file {path} {problem}; delete it and download again "
                        "(dataset.download=true) or copy a good one") from None


def _archives_from_elsewhere(cls: type[VisionDataset], root: Path) -> None:
    """MNIST-family .gz files that are there but fail torchvision's md5 check (the same
    images re-compressed elsewhere) make torchvision download instead: say so, and the fix."""
    if not _is_mnist_like(cls):
        return
    from torchvision.datasets.utils import check_integrity

    folder = _folder(cls, root)
    for url, md5 in cls.resources:
        archive = folder / Path(url).name
        if archive.is_file() and not (folder / archive.stem).is_file() and not check_integrity(str(archive), md5):
            raise UserError(f"{archive} is there but is not the file torchvision downloads (its md5 differs, e.g. "
                            f"re-compressed elsewhere), so it is not used; unpack it yourself with "
                            f"`gunzip -k {archive}` (torchvision reads the unpacked {archive.stem}), or delete it "
                            "and download again")


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


def _broken_file(cls: type[VisionDataset], root: Path) -> tuple[Path, str] | None:
    """The first file that torchvision cannot use, and why: a bad IDX file, or a CIFAR md5 mismatch."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import check_integrity

    folder = _folder(cls, root)
    damaged = "is truncated or corrupted"
    if _is_mnist_like(cls):
        for name in _expected_files(cls):
            try:
                tensor = read_sn3_pascalvincent_tensor(str(folder / name), strict=False)
            except Exception:
                return folder / name, damaged
            if tensor.ndim != (3 if "-images-" in name else 1):  # e.g. an images file under a labels name
                return folder / name, damaged
            if tensor.dtype != torch.uint8:
                return folder / name, f"holds {str(tensor.dtype).removeprefix('torch.')} values, not 8-bit (uint8) ones"
        return None
    for name, md5 in cls.train_list + cls.test_list + [(cls.meta["filename"], cls.meta["md5"])]:
        if not check_integrity(str(folder / name), md5):
            return folder / name, damaged
    return None


def _tensors(dataset: VisionDataset) -> tuple[Tensor, Tensor]:
    """torchvision's .data / .targets as uint8 (N, C, H, W) and int64 (N,)."""
    images = dataset.data
    if isinstance(images, np.ndarray):  # CIFAR: N x H x W x C numpy
        images = torch.from_numpy(images).permute(0, 3, 1, 2)
    else:  # MNIST family: N x H x W tensor
        images = images.unsqueeze(1)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _bundled_file(source: str) -> str:
    return f"{BUNDLED[source]} (bundled with cnn-cli)"


def _read_bundled(source: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    path = resources.files("cnn_cli") / "assets" / BUNDLED[source]
    with resources.as_file(path) as file, np.load(file) as npz:
        train_x, train_y, test_x, test_y = (torch.from_numpy(npz[key]) for key in
                                            ("train_images", "train_labels", "test_images", "test_labels"))
    if source == SAMPLE:  # grey digits, stored without their channel axis
        train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
    return train_x, train_y.long(), test_x, test_y.long()


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
        "The bundled 5,000-digit MNIST sample is used instead (recorded as '%s').\n"
        "Put the files there or set dataset.root=...; dataset.fallback=false makes this an error.\n%s",
        rule, cfg.source, missing, _folder(_source(cfg.source), root.resolve()), FALLBACK_NAME, rule,
    )


# ---------------------------------------------------------------------------- batches


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """A batch (N, C, ...) of any rank -> float32 with the dataset's per-channel mean and std.

    uint8 samples are pixels and scaled to [0, 1] first: (x / 255 - mean) / std. Float
    samples (sensor readings such as basic_motions) are taken as they are: (x - mean) / std.
    `mean` and `std` hold one value per channel (C,), as a tensor or a list.
    """
    shape = (1, -1) + (1,) * (images.dim() - 2)  # broadcast over the batch and every spatial axis
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(shape)
    scale = 1 / (std * 255) if images.dtype == torch.uint8 else 1 / std
    # x * scale - mean / std, in place on the converted batch: two passes instead of three, no
    # second batch-sized tensor (measured twice as fast as addcmul's broadcast on the CPU)
    return images.to(torch.float32, copy=True).mul_(scale).sub_(mean / std)  # copy: a float split stays as it is


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
    for b in range(start, count if stop is None else min(stop, count)):
        pos = slice(b * batch_size + rank * part, b * batch_size + (rank + 1) * part)
        idx = plan.order[pos].to(split.labels.device)
        images = split.images[idx]  # a mapped split reads just these samples and moves them to the device
        if plan.offsets is not None:
            images = random_crop(images, plan.offsets[pos].to(images.device), crop_padding)
        if plan.flips is not None:
            images = flip_where(images, plan.flips[pos].to(images.device))
        yield normalize(images, data.mean, data.std), split.labels[idx]


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
    for b in range(count if limit is None else min(limit, count)):
        pos = slice(b * batch_size, (b + 1) * batch_size)
        yield normalize(split.images[pos], data.mean, data.std), split.labels[pos]
