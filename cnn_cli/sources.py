"""Where samples come from: one Source per kind of data (torchvision's files, a sample bundled
with the package, random pixels, a folder of images, numpy arrays), each with its own `check`
(its settings, no files), `resolve` (the files: what the config leaves to them) and `read`,
and what it stores. `of` is the one place that asks a dataset config which kind it names;
everything else asks the source (docs/datasets.md)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from cnn_cli import arrays, bounds, imagefolder, torchvision_files
from cnn_cli.errors import UserError

log = logging.getLogger(__name__)

FALLBACK_NAME = "mnist_sample (fallback)"
UNIFORM_MEAN, UNIFORM_STD = 0.5, 0.289  # pixels drawn uniformly from 0..255, scaled to [0, 1]
# settings only some sources read, with the value that leaves them unset: set on another source they would do nothing
OPTIONAL = {"test_size": 0, "resize": None, "cache_dir": None, "workers": None, "max_memory_gb": None,
            "skip_bad": True, "num_images": None, "samples": None}


@dataclass
class Samples:
    """What a source read: (samples, labels) per split, samples N x C x ... as uint8 pixels or float32
    readings, labels int64. val None: data.load holds dataset.val_size out of train."""

    train: tuple[Any, Tensor]
    val: tuple[Any, Tensor] | None
    test: tuple[Any, Tensor]
    name: str  # what was read: the dataset's name, or FALLBACK_NAME
    where: str  # a folder, a file, "random pixels (seed 0)"
    fallback: bool = False  # the bundled sample stood in for missing files
    skipped: int | None = None  # unreadable files left out


class Source:
    """A kind of data whose config says everything and whose files are read whole."""

    kind = ""  # dataset.source
    floats = False  # stores float32 readings; else uint8 pixels
    light_on_dark = False  # digits drawn light on a dark background: cnn-predict warns of inverted inputs
    falls_back = False  # the bundled MNIST sample may stand in for missing files (dataset.fallback)
    drawn = False  # samples drawn at random, not read: nothing to look for, uniform statistics
    reads: frozenset[str] = frozenset()  # the OPTIONAL settings it reads
    fractions = False  # dataset.val_size (and test_size) may be a fraction of each class
    own_files = ""  # the user's own files, found again only through root=: how cnn-eval asks for them
    verify_hint = ""  # how cnn-export is shown them
    given_test = ""  # how the files give a test split of their own

    def stores_floats(self, cfg: DictConfig) -> bool:
        return self.floats

    def stats(self, cfg: DictConfig) -> tuple[list[float], list[float]]:
        """The per-channel mean and std the samples are normalised with."""
        return list(cfg.mean), list(cfg.std)

    def check(self, cfg: DictConfig) -> None:
        """Its own settings, before any file is read."""

    def resolve(self, cfg: DictConfig) -> Any:
        """Fill in what the config leaves to the files (or to their size); returns what was found, for `read`."""
        return None

    def read(self, cfg: DictConfig, found: Any, device: torch.device | str) -> Samples:
        raise NotImplementedError

    def empty_test_fix(self, cfg: DictConfig) -> str:
        if "test_size" not in self.reads:
            return "give the test split some"
        return (f"dataset.test_size={cfg.test_size} holds out none of so few samples: give a count, e.g. "
                f"dataset.test_size=2, or {self.given_test}")


class Torchvision(Source):
    """torchvision's files in dataset.root, downloaded when allowed (cnn_cli/torchvision_files.py)."""

    def __init__(self, kind: str, idx_files: bool = False, light_on_dark: bool = False, falls_back: bool = False):
        self.kind, self.idx_files, self.light_on_dark, self.falls_back = kind, idx_files, light_on_dark, falls_back

    def read(self, cfg: DictConfig, found: Any, device: torch.device | str) -> Samples:
        try:
            train_x, train_y, test_x, test_y, where = torchvision_files.read(cfg, self.kind, self.idx_files)
        except torchvision_files.Missing as missing:
            if not (self.falls_back and cfg.get("fallback", False)):
                raise torchvision_files.missing_error(cfg, self.kind, missing) from None
            _warn_fallback(self.kind, missing)
            return replace(MNIST_SAMPLE.read(cfg, None, device), name=FALLBACK_NAME, fallback=True)
        return Samples((train_x, train_y), None, (test_x, test_y), cfg.name, where)


def _warn_fallback(kind: str, missing: torchvision_files.Missing) -> None:
    rule = "=" * 78
    log.warning(
        "\n%s\nFull %s could not be found or downloaded: %s.\n  looked in: %s\n"
        "The bundled 5,000-digit MNIST sample is used instead (recorded as '%s').\n"
        "Put the files there or set dataset.root=...; dataset.fallback=false makes this an error.\n%s",
        rule, kind, missing, missing.looked_in, FALLBACK_NAME, rule,
    )


class Bundled(Source):
    """A small real dataset shipped in cnn_cli/assets as an .npz of train/test images and labels."""

    def __init__(self, kind: str, file: str, channel_axis: bool, floats: bool = False, light_on_dark: bool = False):
        self.kind, self.file, self.channel_axis, self.floats, self.light_on_dark = (kind, file, channel_axis, floats,
                                                                                    light_on_dark)

    def read(self, cfg: DictConfig, found: Any, device: torch.device | str) -> Samples:
        path = resources.files("cnn_cli") / "assets" / self.file
        with resources.as_file(path) as file, np.load(file) as npz:
            train_x, train_y, test_x, test_y = (torch.from_numpy(npz[key]) for key in
                                                ("train_images", "train_labels", "test_images", "test_labels"))
        if not self.channel_axis:  # grey digits, stored without their channel axis
            train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
        return Samples((train_x, train_y.long()), None, (test_x, test_y.long()), cfg.name,
                       f"{self.file} (bundled with cnn-cli)")


class Random(Source):
    """dataset.num_images = [train, test] random samples of dataset.input_shape with random labels,
    the same every time (seed 0): times an architecture with no files at all."""

    kind, drawn, reads = "random", True, frozenset({"num_images"})

    def stats(self, cfg: DictConfig) -> tuple[list[float], list[float]]:
        """Left null, the uniform pixels' 0.5 and 0.289 for each channel."""
        channels = cfg.input_shape[0]
        return ([UNIFORM_MEAN] * channels if cfg.mean is None else list(cfg.mean),
                [UNIFORM_STD] * channels if cfg.std is None else list(cfg.std))

    def resolve(self, cfg: DictConfig) -> None:
        """Classes left null are named 0, 1, ..."""
        if cfg.classes is None and cfg.num_classes is not None:
            check_num_classes(cfg.num_classes)
            cfg.classes = [str(i) for i in range(cfg.num_classes)]

    def read(self, cfg: DictConfig, found: Any, device: torch.device | str) -> Samples:
        sizes = list(cfg.num_images or [])
        if len(sizes) != 2 or min(sizes) < 1:
            raise UserError(f"dataset.num_images={sizes} must be two counts, [train, test], e.g. [50000, 10000]")
        gen = torch.Generator().manual_seed(0)
        train, test = [(torch.randint(0, 256, (n, *cfg.input_shape), dtype=torch.uint8, generator=gen),
                        torch.randint(0, cfg.num_classes, (n,), generator=gen)) for n in sizes]
        return Samples(train, None, test, cfg.name, "random pixels (seed 0)")


class ImageFolder(Source):
    """Your own images, DIR/<class>/*.png, decoded once into a cache (cnn_cli/imagefolder.py)."""

    kind, fractions = imagefolder.SOURCE, True
    reads = frozenset({"test_size", "resize", "cache_dir", "workers", "max_memory_gb", "skip_bad"})
    own_files = "a folder of images: give it with root=DIR (the same tree, so that its split is the same)"
    verify_hint = " (give root=DIR or verify_inputs=DIR to verify on your images)"
    given_test = "a DIR/test/ folder"

    def check(self, cfg: DictConfig) -> None:
        imagefolder.check(cfg)

    def resolve(self, cfg: DictConfig) -> tuple[imagefolder.Listing, imagefolder.Cache]:
        return imagefolder.resolve(cfg)

    def read(self, cfg: DictConfig, found: Any, device: torch.device | str) -> Samples:
        listing, cache = found
        (train, val, test), skipped = imagefolder.read(cfg, device, listing, cache)
        return Samples(train, val, test, cfg.name, str(listing.root), skipped=skipped)


class Arrays(Source):
    """Your own numpy arrays, FILE.npz or DIR/*.npy: x_train, y_train, and optional x_val/y_val,
    x_test/y_test (cnn_cli/arrays.py)."""

    kind, fractions, reads = arrays.SOURCE, True, frozenset({"test_size", "samples"})
    own_files = ("numpy arrays: give them with root=FILE.npz or DIR (the same arrays, so that its split is the "
                 "same)")
    verify_hint = " (give root=FILE.npz or DIR to verify on your arrays)"
    given_test = "x_test and y_test"

    def stores_floats(self, cfg: DictConfig) -> bool:
        return cfg.get("samples") == arrays.FLOAT32

    def check(self, cfg: DictConfig) -> None:
        arrays.check(cfg)

    def resolve(self, cfg: DictConfig) -> arrays.Found:
        return arrays.resolve(cfg)

    def read(self, cfg: DictConfig, found: arrays.Found, device: torch.device | str) -> Samples:
        train, val, test = arrays.read(cfg, found)
        return Samples(train, val, test, cfg.name, str(found.path))


SOURCES: dict[str, Source] = {source.kind: source for source in (
    Torchvision("MNIST", idx_files=True, light_on_dark=True, falls_back=True),
    Torchvision("FashionMNIST", idx_files=True), Torchvision("CIFAR10"), Torchvision("CIFAR100"),
    Bundled("sample", "mnist_sample.npz", channel_axis=False, light_on_dark=True),  # 5,000 MNIST digits
    Bundled("basic_motions", "basic_motions.npz", channel_axis=True, floats=True),  # 80 smartwatch IMU recordings
    Random(), ImageFolder(), Arrays(),
)}
MNIST_SAMPLE = SOURCES["sample"]  # stands in for missing MNIST files (dataset.fallback), and verifies exports


def of(cfg: DictConfig) -> Source:
    """The source a dataset config names."""
    source = SOURCES.get(cfg.source)
    if source is None:
        raise UserError(f"dataset.source '{cfg.source}' is not one of {', '.join(SOURCES)}")
    return source


def named(kind: str) -> Source | None:
    """The source a preprocessing contract names, None for one this version does not know."""
    return SOURCES.get(kind)


def check_num_classes(num_classes: int) -> None:
    if not 2 <= num_classes <= bounds.MAX_CLASSES:
        raise UserError(f"dataset.num_classes={num_classes} must be from 2 to {bounds.MAX_CLASSES:,}")


def readers(key: str) -> str:
    """The sources that read an OPTIONAL setting, as a user names them: 'dataset=imagefolder or dataset=arrays'."""
    return " or ".join(f"dataset={source.kind}" for source in SOURCES.values() if key in source.reads)


def of_own_files() -> str:
    """The sources of a user's own files (which find shape, classes and normalisation, and split by fractions)."""
    return " or ".join(f"dataset={source.kind}" for source in SOURCES.values() if source.own_files)
