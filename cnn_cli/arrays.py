"""Your own numpy arrays (dataset=arrays): FILE.npz, or a DIR of .npy files, holding x_train and
y_train, and x_val/y_val and x_test/y_test where the split is given (else held out of the
training arrays like an image folder's). Samples are uint8 pixels or float readings, shaped
(N, C, L), (N, C, H, W) or (N, C, D, H, W); labels are class indices from 0. The input shape,
classes and normalisation are read off the arrays, so logged sensor windows train with no code.

The arrays are someone's data: nothing is unpickled, each array's size is read from its header
and checked against the memory free before it is read (a small .npz cannot unpack into a
huge one), and only regular files are opened, never through a link.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from cnn_cli import bounds, imagefolder
from cnn_cli.errors import DataMissing, UserError, first_line, printable

SOURCE = "arrays"
UINT8, FLOAT32 = "uint8", "float32"  # dataset.samples: what the arrays hold (null: read off x_train)
SPLITS = imagefolder.SPLITS  # train, val, test
KEYS = tuple(f"{axis}_{split}" for split in SPLITS for axis in ("x", "y"))
SAVE = "np.savez(FILE, x_train=x, y_train=y)"  # how to write what this reads
STATS_CHUNK = 4096  # samples per step of the normalisation statistics


@dataclass
class Found:
    """The arrays of every split in one: samples (N, C, ...) uint8 or float32, labels (N,) int64,
    each row's split (index into SPLITS), and the rows of train, val and test."""

    path: Path
    samples: np.ndarray
    labels: np.ndarray
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]


def check(cfg: DictConfig) -> None:
    """The arrays' settings, before any file is read."""
    if not cfg.root:
        raise UserError(f"dataset.root is empty; give your arrays: dataset.root=FILE.npz (from {SAVE}) or a folder "
                        "of x_train.npy, y_train.npy, ...")
    if cfg.samples not in (None, UINT8, FLOAT32):
        raise UserError(f"dataset.samples={cfg.samples}: choose uint8 (pixels) or float32 (readings), or leave it "
                        "out (null: x_train's)")
    imagefolder.check_held_out(cfg)


def resolve(cfg: DictConfig) -> Found:
    """Read and check the arrays, fill in what the config leaves to them (input_shape, samples,
    num_classes, classes, mean, std) and draw the split."""
    path = Path(cfg.root).expanduser()
    arrays = _read_all(path, f"dataset.root={cfg.root}")
    x_train = arrays["x_train"]
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if (x is None) != (y is None):
            given, lacking = ("x", "y") if y is None else ("y", "x")
            raise UserError(f"dataset.root={cfg.root}: {given}_{split} is given but {lacking}_{split} is not; give "
                            f"both (one label per sample), or neither")
        if x is None:
            continue
        if len(x) != len(y):
            raise UserError(f"dataset.root={cfg.root}: x_{split} holds {len(x)} samples but y_{split} {len(y)} "
                            "labels; give one label per sample")
        if x.shape[1:] != x_train.shape[1:] or x.dtype != x_train.dtype:
            raise UserError(f"dataset.root={cfg.root}: x_{split} holds {_describe(x)} samples but x_train "
                            f"{_describe(x_train)}; give every split the same shape and kind")
    given = [split for split in SPLITS if f"x_{split}" in arrays]
    samples = np.concatenate([arrays[f"x_{split}"] for split in given]) if len(given) > 1 else x_train
    labels = np.concatenate([arrays[f"y_{split}"] for split in given]).astype(np.int64)
    splits = np.concatenate([np.full(len(arrays[f"y_{split}"]), SPLITS.index(split)) for split in given])
    with open_dict(cfg):
        _fill(cfg, "input_shape", list(x_train.shape[1:]), "x_train's sample shape")
        _fill(cfg, "samples", UINT8 if x_train.dtype == np.uint8 else FLOAT32, "what x_train holds")
        _fill_classes(cfg, labels)
        rows = imagefolder.draw_splits(cfg, labels, splits, np.ones(len(labels), dtype=bool))
        if cfg.mean is None or cfg.std is None:
            mean, std = _stats(samples, rows[0])
            cfg.mean = cfg.mean if cfg.mean is not None else mean
            cfg.std = cfg.std if cfg.std is not None else std
    return Found(path, samples, labels, rows)


def read(cfg: DictConfig, found: Found) -> tuple[tuple[Tensor, Tensor], ...]:
    """(samples, labels) of train, val and test, as drawn by `resolve`."""
    return tuple((torch.from_numpy(found.samples[rows]), torch.from_numpy(found.labels[rows]))
                 for rows in found.rows)


def _fill(cfg: DictConfig, key: str, value: list | str, what: str) -> None:
    if cfg[key] is not None and cfg[key] != value:
        raise UserError(f"dataset.{key}={cfg[key]} but the arrays' is {value} ({what}); leave dataset.{key} out "
                        "(null) to take the arrays'")
    cfg[key] = value


def _fill_classes(cfg: DictConfig, labels: np.ndarray) -> None:
    """num_classes: given, else as many as dataset.classes names, else the largest label + 1; classes
    named 0, 1, ... unless given. Every label must name one."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0:
        raise UserError(f"dataset.root={cfg.root}: the labels run from {low}; labels are class indices from 0: "
                        "shift them, e.g. y - y.min()")
    if cfg.num_classes is None:
        cfg.num_classes = len(cfg.classes) if cfg.classes is not None else high + 1
    if high >= cfg.num_classes or cfg.num_classes > bounds.MAX_CLASSES:
        raise UserError(f"dataset.root={cfg.root}: the labels run up to {high}, but there are {cfg.num_classes} "
                        f"classes (at most {bounds.MAX_CLASSES:,}); labels are class indices 0 to K - 1: fix them, or "
                        "dataset.num_classes / dataset.classes")
    if cfg.classes is None:
        cfg.classes = [str(i) for i in range(cfg.num_classes)]


def _stats(samples: np.ndarray, rows: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training rows (pixels in [0, 1], readings as they are), a
    chunk at a time and in two passes (no float64 copy of the set; no cancellation in the variance)."""
    scale = 1 / 255 if samples.dtype == np.uint8 else 1.0
    axes = (0, *range(2, samples.ndim))
    count = len(rows) * int(np.prod(samples.shape[2:]))

    def chunks():
        for start in range(0, len(rows), STATS_CHUNK):
            yield samples[rows[start:start + STATS_CHUNK]].astype(np.float64) * scale

    mean = sum(chunk.sum(axis=axes) for chunk in chunks()) / count
    shape = (1, -1) + (1,) * (samples.ndim - 2)
    std = np.sqrt(sum(((chunk - mean.reshape(shape)) ** 2).sum(axis=axes) for chunk in chunks()) / count)
    std = np.where(std >= 1e-6, std, 1.0)  # a constant channel: nothing to scale
    return mean.round(6).tolist(), std.round(6).tolist()


# ---------------------------------------------------------------------------- the files


def _read_all(path: Path, where: str) -> dict[str, np.ndarray]:
    """Every array of FILE.npz or DIR/*.npy, by key, each checked."""
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        looked = "" if path.is_absolute() else f" (in {Path.cwd()}, where relative paths are looked up)"
        raise DataMissing(f"{where} does not exist{looked}; give your arrays: FILE.npz or a folder of .npy files",
                          str(path)) from None
    except OSError as err:
        raise UserError(f"{where}: cannot read it ({err.strerror})") from None
    if is_dir:
        members = {}
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.endswith(".npy"):
                    members[entry.name[:-4]] = lambda file=Path(entry.path): _open_regular(file, where)
        return _checked(members, where, f"the folder {path}")
    if path.suffix == ".npy":
        raise UserError(f"{where} is one .npy array; give the folder that holds x_train.npy and y_train.npy, or one "
                        f".npz file ({SAVE})")
    with _open_regular(path, where) as file:
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError):
            raise UserError(f"{where} is not an .npz file (as {SAVE} writes) nor a folder of .npy files") from None
        with archive:
            members = {name[:-4] if name.endswith(".npy") else name: lambda name=name: archive.open(name)
                       for name in archive.namelist()}
            return _checked(members, where, path.name)


def _open_regular(path: Path, where: str) -> IO[bytes]:
    """A regular file opened for reading: never through a symbolic link, never a FIFO or a device
    (which could block or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        kind = "a symbolic link" if path.is_symlink() else f"not readable ({err.strerror})"
        raise UserError(f"{where}: {printable(path.name)} is {kind}; give the file itself, a regular file") from None
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise UserError(f"{where}: {printable(path.name)} is not a regular file (a FIFO or a device); give the arrays' "
                        "file itself")
    return file


def _checked(members: dict[str, Callable[[], IO[bytes]]], where: str, holder: str) -> dict[str, np.ndarray]:
    unknown = sorted(set(members) - set(KEYS))
    if unknown:
        names = ", ".join(printable(name)[:40] for name in unknown[:5])
        raise UserError(f"{where}: {holder} holds {names}, which nothing reads; name the arrays "
                        f"{', '.join(KEYS)} (x_train and y_train are needed)")
    for key in ("x_train", "y_train"):
        if key not in members:
            found = ", ".join(sorted(members)) or "no arrays"
            raise UserError(f"{where}: {holder} has no {key} (it holds {found}); save the arrays as {SAVE}")
    return {key: _read_array(key, members[key], where) for key in KEYS if key in members}


def _read_array(key: str, opener: Callable[[], IO[bytes]], where: str) -> np.ndarray:
    """One array, its header checked before the data is read: numbers of the right kind and rank,
    not empty, and fitting in memory; samples as uint8 or float32 (all finite), labels as int64."""
    samples = key.startswith("x_")
    with opener() as file:
        try:
            version = np.lib.format.read_magic(file)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"format version {version}")
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(file)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{where}: {key} is not an .npy array numpy writes ({first_line(err)[:80]}); save it with "
                            f"{SAVE}") from None
    what = f"{where}: {key}"
    if dtype.hasobject or dtype.fields is not None:
        raise UserError(f"{what} holds Python objects or records ({dtype}), which are never unpickled; save plain "
                        f"numbers, e.g. np.asarray({key}, dtype=np.{'float32' if samples else 'int64'})")
    if samples and not (dtype == np.uint8 or dtype.kind == "f"):
        raise UserError(f"{what} holds {dtype} values; samples are uint8 pixels (0-255) or float readings: convert "
                        f"them, e.g. {key}.astype(np.float32)")
    if not samples and dtype.kind not in "iu":
        raise UserError(f"{what} holds {dtype} values; labels are class indices (integers from 0): convert them, "
                        f"e.g. {key}.astype(np.int64)")
    rank = len(shape) - 1
    if samples and not 2 <= rank <= 4:
        raise UserError(f"{what} has shape {_shape(shape)}; give N samples with the channels first: N x C x L "
                        f"(1-D), N x C x H x W (2-D) or N x C x D x H x W (3-D); e.g. {key}[:, None] adds one channel")
    if not samples and rank != 0:
        raise UserError(f"{what} has shape {_shape(shape)}; give one label per sample (N,), e.g. {key}.ravel()")
    if not all(shape):
        raise UserError(f"{what} has shape {_shape(shape)}, which holds no samples; give some"
                        + f", or leave {key} out" * (not key.endswith("_train")))
    bounds.check_memory(int(np.prod(shape, dtype=object)) * dtype.itemsize, what, "give fewer samples")
    with opener() as file:
        try:
            array = np.lib.format.read_array(file, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(f"{what} is truncated or damaged ({first_line(err)[:80]}); save it again") from None
    if not samples or dtype == np.uint8:
        return array
    with np.errstate(over="ignore"):  # a float64 reading beyond float32's range becomes inf, refused just below
        array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        raise UserError(f"{what} holds NaN or infinite readings (first in sample {int(np.argmin(finite))}; "
                        f"{int((~finite).sum())} samples in all); drop or fill them first")
    return array


def _shape(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape)) if shape else "() (one number)"


def _describe(array: np.ndarray) -> str:
    return f"{_shape(array.shape[1:])} {array.dtype}"
