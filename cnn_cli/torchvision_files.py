"""torchvision's dataset files (MNIST, FashionMNIST, CIFAR10, CIFAR100): found, downloaded when
allowed, parsed, and a broken one named. The MNIST family's files already there are read with
numpy (cnn_cli/idx.py), so such a run never imports torchvision."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from cnn_cli import idx
from cnn_cli.errors import DataMissing, UserError

if TYPE_CHECKING:
    from torchvision.datasets import VisionDataset

# Only these torchvision.datasets classes can be named in a config (configs travel inside
# shared checkpoints). torchvision is imported only when one is opened: its import is a
# large part of start-up (docs/performance.md), which a run on the bundled sample or a
# config error need not pay.
KINDS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100")


def read(cfg: DictConfig, kind: str, idx_files: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """Train and test samples (N x C x H x W, uint8) and labels of torchvision's dataset `kind` in
    dataset.root, and the folder they were read from; Missing if the files are not there and cannot
    be downloaded. idx_files: the MNIST family, whose files already there are read with numpy."""
    if not cfg.root:
        raise UserError(f"dataset.root is empty; give the folder that holds (or will hold) {kind}/, e.g. "
                        "dataset.root=data")
    root = Path(cfg.root).expanduser()
    if root.exists() and not root.is_dir():
        raise UserError(f"dataset.root={cfg.root} is a file, not a folder; point it at the folder that holds "
                        f"{kind}/")
    if idx_files:  # files already there: read without torchvision
        raw = root / kind / "raw"
        found = idx.read_splits(raw)
        if found is not None:
            return (*found, str(raw.resolve()))
    cls = dataset_class(kind)
    try:
        train, test = _open(cls, root, cfg.download)
    except Missing as missing:
        missing.looked_in = files_folder(cls, root.resolve())
        raise
    for split in (train, test):
        if len(split.data) != len(split.targets):
            raise UserError(f"dataset '{cfg.name}': the {'train' if split.train else 'test'} files in "
                            f"{files_folder(cls, root)} hold {len(split.data)} images but {len(split.targets)} "
                            "labels; one of them is from another dataset or damaged: delete them and download again")
    return (*_tensors(train), *_tensors(test), str(files_folder(cls, root.resolve())))


def missing_error(cfg: DictConfig, kind: str, missing: Missing) -> DataMissing:
    """The one line for files that are not there: the folder, the files expected, the ways on."""
    cls, root = dataset_class(kind), Path(cfg.root).expanduser()
    return DataMissing(f"dataset '{cfg.name}': {missing} in {files_folder(cls, root)}; expected "
                       f"{', '.join(expected_files(cls))} (torchvision's layout). Run once with network "
                       "(dataset.download=true) or copy them there, or set dataset.root",
                       f"{files_folder(cls, root.resolve())} ({', '.join(expected_files(cls))})")


def dataset_class(name: str) -> type[VisionDataset]:
    from torchvision import datasets

    return getattr(datasets, name)


def _is_mnist_like(cls: type[VisionDataset]) -> bool:
    """MNIST and FashionMNIST: IDX files in <root>/<class>/raw (CIFAR: pickled batches)."""
    from torchvision.datasets import MNIST

    return issubclass(cls, MNIST)


class Missing(Exception):
    """The files are not there and could not be downloaded."""

    looked_in: Path | None = None  # the folder looked in, absolute


def _open(cls: type[VisionDataset], root: Path, download: bool):
    """Open both splits with torchvision, downloading if allowed; name a broken file."""
    if not _present(cls, root):
        try:
            if not download:
                raise Missing("no files (dataset.download=false)")
            try:
                cls(str(root), train=True, download=True)
            except (OSError, RuntimeError) as err:  # no network, refused, DNS failure ...
                raise Missing(f"no files, and the download failed ({str(err).strip().splitlines()[-1]})") from None
        except Missing:
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

    folder = files_folder(cls, root)
    for url, md5 in cls.resources:
        archive = folder / Path(url).name
        if archive.is_file() and not (folder / archive.stem).is_file() and not check_integrity(str(archive), md5):
            raise UserError(f"{archive} is there but is not the file torchvision downloads (its md5 differs, e.g. "
                            f"re-compressed elsewhere), so it is not used; unpack it yourself with "
                            f"`gunzip -k {archive}` (torchvision reads the unpacked {archive.stem}), or delete it "
                            "and download again")


def files_folder(cls: type[VisionDataset], root: Path) -> Path:
    if _is_mnist_like(cls):
        return root / cls.__name__ / "raw"
    return root / cls.base_folder


def expected_files(cls: type[VisionDataset]) -> list[str]:
    if _is_mnist_like(cls):
        return [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


def _present(cls: type[VisionDataset], root: Path) -> bool:
    return all((files_folder(cls, root) / name).is_file() for name in expected_files(cls))


def _broken_file(cls: type[VisionDataset], root: Path) -> tuple[Path, str] | None:
    """The first file that torchvision cannot use, and why: a bad IDX file, or a CIFAR md5 mismatch."""
    from torchvision.datasets.mnist import read_sn3_pascalvincent_tensor
    from torchvision.datasets.utils import check_integrity

    folder = files_folder(cls, root)
    damaged = "is truncated or corrupted"
    if _is_mnist_like(cls):
        for name in expected_files(cls):
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
