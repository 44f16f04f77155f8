"""Your own images (dataset=imagefolder): a folder tree -> one uint8 cache decoded once -> the
tensor pipeline of data.py.

The first run decodes every image in parallel into a .npy array keyed by a fingerprint of
the files and the settings that shape them; later runs memory-map it and start at once. The
classes, the input shape and the normalisation are read off the data, so a user types only
the folder. A cache larger than dataset.max_memory_gb stays mapped and batches are read
from it; otherwise it is loaded whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import Tensor

from cnn_cli import bounds, images, runtime
from cnn_cli.errors import DataMissing, UserError, first_line, printable
from cnn_cli.files import write_file, write_text

log = logging.getLogger(__name__)

SOURCE = "imagefolder"
SPLITS = ("train", "val", "test")
CACHE_FOLDER = ".cnn-cache"
CACHE_VERSION = 1  # bump when the decoder's output changes: old caches are then not reused
MAX_NAMED = 10  # bad files named in the warning; the rest are counted
MEMORY_FRACTION = 0.25  # default dataset.max_memory_gb: this share of the machine's RAM
_OPENED: dict[Path, "Cache"] = {}  # caches this process has mapped: resolve() and read() share one, logged once


@dataclass
class Listing:
    """The image files of a tree, in a fixed order, with their class and split."""

    root: Path
    classes: list[str]
    files: list[Path]  # relative to root
    labels: np.ndarray  # (N,) int64
    splits: np.ndarray  # (N,) index into SPLITS, or -1: the split is drawn (a plain <class>/ tree)


@dataclass
class Cache:
    """A decoded tree: images (N, C, H, W) uint8, memory-mapped, and what decoding found."""

    path: Path
    meta: dict
    images: np.ndarray
    mapping: mmap.mmap
    reused: bool


# ---------------------------------------------------------------------------- config


def resolve(cfg: DictConfig) -> tuple[Listing, Cache]:
    """Fill in what the user need not type (input_shape, num_classes, classes, mean, std) from
    the tree and its cache, decoding it if need be, so the model's `${dataset.num_classes}`
    and every later tool see a complete dataset config (recorded in the checkpoint); returns
    the tree's listing and cache, for `read` to use without walking the tree again. `check`
    has passed."""
    listing = scan(cfg)
    with open_dict(cfg):
        if cfg.classes is not None and list(cfg.classes) != listing.classes:
            raise UserError(f"dataset.classes={list(cfg.classes)} but the folders of {cfg.root} are "
                            f"{listing.classes}; leave dataset.classes out (null) to take the folder names")
        cfg.classes = listing.classes
        cfg.num_classes = len(listing.classes)
        if cfg.input_shape is None:
            cfg.input_shape = first_shape(listing)
        split_rows(cfg, listing, set())  # sizes that leave no training images: said before decoding
        cache = open_cache(cfg, listing)
        if cfg.mean is None or cfg.std is None:
            mean, std = stats(cache, split_rows(cfg, listing, bad_files(cache))[0], cfg)
            cfg.mean = cfg.mean if cfg.mean is not None else mean
            cfg.std = cfg.std if cfg.std is not None else std
            log.info("normalisation from the training images: mean %s, std %s", _rounded(cfg.mean), _rounded(cfg.std))
    return listing, cache


def check(cfg: DictConfig) -> None:
    """The image-folder settings, before any file is read."""
    if cfg.resize is not None and cfg.resize not in images.RESIZE:
        raise UserError(f"dataset.resize={cfg.resize}: choose {', '.join(images.RESIZE)}, or null (every image must "
                        "then have dataset.input_shape's size)")
    check_held_out(cfg)
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"dataset.workers={cfg.workers} must be >= 1 (or null: all cores)")
    if cfg.max_memory_gb is not None and cfg.max_memory_gb < 0:
        raise UserError(f"dataset.max_memory_gb={cfg.max_memory_gb} must be >= 0 (0: always read from the map)")
    shape = cfg.input_shape
    if shape is not None and (len(shape) != 3 or shape[0] not in (1, 3) or min(shape) < 1):
        raise UserError(f"dataset.input_shape={list(cfg.input_shape)}: images are [C, H, W] with C=1 (greyscale) or "
                        "C=3 (RGB), e.g. dataset.input_shape=[3,64,64]; or leave it out to take the first image's")
    if not cfg.root:
        raise UserError("dataset.root is empty; give the folder of your images: dataset.root=DIR holding DIR/<class>/ "
                        "or DIR/train/<class>/")


def check_held_out(cfg: DictConfig) -> None:
    """dataset.val_size and test_size, counts or fractions, and the seed that draws them: before any split."""
    for key in ("val_size", "test_size"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (isinstance(value, float) and value >= 1):
            raise UserError(f"dataset.{key}={value}: give a count of samples (an integer >= 0) or a fraction of each "
                            f"class (0 <= x < 1), e.g. dataset.{key}=0.1")
    bounds.check_seed("dataset.split_seed", cfg.split_seed)  # it splits the files before data.check runs


# ---------------------------------------------------------------------------- the tree


def scan(cfg: DictConfig) -> Listing:
    """The tree's files: DIR/train/<class>/ (with optional val/ and test/), or DIR/<class>/."""
    root = Path(cfg.root).expanduser()
    if not root.exists():
        where = "" if root.is_absolute() else f" (in {Path.cwd()}, where relative paths are looked up)"
        raise DataMissing(f"dataset.root={cfg.root} does not exist{where}; give the folder of your images", str(root))
    if not root.is_dir():
        raise UserError(f"dataset.root={cfg.root} is a file, not a folder; give the folder that holds <class>/ "
                        "folders of images")
    if (root / "train").is_dir():
        parts = [(split, root / split) for split in SPLITS if (root / split).is_dir()]
    else:
        parts = [(None, root)]
    classes: list[str] | None = None
    files, labels, splits = [], [], []
    for split, folder in parts:
        found = _classes(folder)
        if classes is None:
            classes = found
            if not classes:
                raise UserError(f"dataset.root={cfg.root}: {folder} holds no class folders; put each class's images "
                                f"in a folder of its own: {folder}/<class>/*.png")
        elif found != classes:
            missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise UserError(f"dataset.root={cfg.root}: the classes of {split}/ differ from train/'s: "
                            + "; ".join(filter(None, [f"missing {missing}" * bool(missing),
                                                      f"extra {extra}" * bool(extra)])))
        for label, name in enumerate(classes):
            found_files = images.image_files(folder / name)
            if not found_files:
                raise UserError(f"dataset.root={cfg.root}: the class folder {folder / name} holds no images "
                                f"({', '.join(images.EXTENSIONS)}); add some or remove the folder")
            files += [path.relative_to(root) for path in found_files]
            labels += [label] * len(found_files)
            splits += [SPLITS.index(split) if split else -1] * len(found_files)
    return Listing(root, classes, files, np.array(labels, dtype=np.int64), np.array(splits, dtype=np.int64))


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def first_shape(listing: Listing) -> list[int]:
    """[C, H, W] of the first training image: greyscale modes give 1 channel, the rest 3."""
    from PIL import Image

    for path in listing.files:
        try:  # a decompression bomb (or a header claiming 65500x65500) is refused by PIL unread, like any bad file
            with Image.open(listing.root / path) as image:
                channels = 1 if image.mode in ("1", "L", "LA", "I", "F") or image.mode.startswith("I;16") else 3
                height, width = images.upright_size(image)[::-1]
                shape = [channels, height, width]
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
        log.info("dataset.input_shape not given: %s from the first image, %s (set dataset.input_shape=[C,H,W] to "
                 "choose)", shape, printable(str(path)))
        return shape
    raise UserError(f"dataset.root={listing.root}: none of the {len(listing.files)} image files can be read")


# ---------------------------------------------------------------------------- the cache


def open_cache(cfg: DictConfig, listing: Listing) -> Cache:
    """The decoded tree, reused if the fingerprint matches, else decoded now and written atomically."""
    key = _fingerprint(cfg, listing)
    folder = cache_folder(cfg, listing.root)
    path = folder / f"{key}.npy"
    meta_path = folder / f"{key}.json"
    if path in _OPENED and path.is_file():
        _refuse_bad(cfg, listing, _OPENED[path].meta["bad"])
        return _OPENED[path]
    expected = (len(listing.files), *cfg.input_shape)
    reused = path.is_file() and meta_path.is_file()
    try:
        meta, array, mapping = _map(path, meta_path, expected) if reused else (None, None, None)
    except _Damaged as damaged:
        log.warning("image cache %s is damaged (%s): decoding again", path, damaged)
        reused = False
    if reused:
        log.info("image cache reused: %s", path)
    else:
        try:
            _decode_all(cfg, listing, path, meta_path)
        except BaseException:
            with contextlib.suppress(OSError):  # a cache folder this attempt made: nothing left behind
                folder.rmdir()
            raise
        log.info("image cache written: %s", path)
        meta, array, mapping = _map(path, meta_path, expected)
    bad = meta["bad"]
    _refuse_bad(cfg, listing, bad)
    if bad:
        names = ", ".join(name for name, _ in bad[:MAX_NAMED]) + (f" and {len(bad) - MAX_NAMED} more"
                                                                  if len(bad) > MAX_NAMED else "")
        log.warning("skipped %d unreadable image file(s): %s", len(bad), printable(names))
    _OPENED[path] = Cache(path, meta, array, mapping, reused)
    return _OPENED[path]


def _refuse_bad(cfg: DictConfig, listing: Listing, bad: list) -> None:
    """dataset.skip_bad=false refuses a cache decoded earlier with skip_bad=true as decoding refuses a bad file."""
    if bad and not cfg.skip_bad:
        _check_bad(listing.root / bad[0][0], bad[0][1], skip_bad=False)


class _Damaged(Exception):
    """A cache file that is not what this module wrote (truncated, edited, another shape)."""


def _map(path: Path, meta_path: Path, shape: tuple[int, ...]) -> tuple[dict, np.ndarray, mmap.mmap]:
    """The cache's record and its images, memory-mapped (a private, copy-on-write map: writable
    for torch, never written back). The .npy header is parsed as data, never unpickled."""
    try:
        meta = json.loads(meta_path.read_text())
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                else np.lib.format.read_array_header_2_0
            stored, _, dtype = read_header(f)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
            if tuple(stored) != shape or dtype != np.uint8 or size != offset + int(np.prod(shape)):
                raise _Damaged(f"holds {list(stored)} {dtype}, not {list(shape)} uint8")
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        if not (isinstance(meta, dict) and isinstance(meta.get("bad"), list) and isinstance(meta.get("stats"), dict)):
            raise _Damaged(f"{meta_path.name} is not its record")
    except (OSError, ValueError) as err:  # ValueError: a bad magic string, header or JSON
        raise _Damaged(first_line(err)) from None
    return meta, np.frombuffer(mapping, dtype=np.uint8, offset=offset).reshape(shape), mapping


def cache_folder(cfg: DictConfig, root: Path) -> Path:
    """dataset.cache_dir, else DIR/.cnn-cache if it can be written, else the user cache folder."""
    if cfg.cache_dir:
        folder = Path(cfg.cache_dir).expanduser()
        if folder.exists() and not folder.is_dir():
            raise UserError(f"dataset.cache_dir={cfg.cache_dir} is a file; give a folder")
        if not _writable(folder):
            raise UserError(f"dataset.cache_dir={cfg.cache_dir} cannot be written; give a folder you can write, or "
                            "leave it out (null: a .cnn-cache folder in dataset.root, else your cache folder)")
        return folder
    for folder in (root / CACHE_FOLDER,
                   Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnn-cli" / "imagefolder"):
        if _writable(folder):
            return folder
    raise UserError(f"no writable cache folder: neither {root / CACHE_FOLDER} nor the user cache folder can be "
                    "written; set dataset.cache_dir=<a folder you can write>")


def _writable(folder: Path) -> bool:
    """The folder exists or can be made, and a file can be created in it (probed, then removed)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _fingerprint(cfg: DictConfig, listing: Listing) -> str:
    """Relative paths, sizes, mtimes, split folders and labels of every file, with the shape and
    resize policy: a change to any of them decodes afresh."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, list(cfg.input_shape), cfg.resize, listing.classes]).encode())
    for path, label, split in zip(listing.files, listing.labels.tolist(), listing.splits.tolist()):
        stat = (listing.root / path).stat()
        digest.update(f"{path.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{label}\0{split}\n".encode())
    return digest.hexdigest()[:24]


def _decode_all(cfg: DictConfig, listing: Listing, path: Path, meta_path: Path) -> None:
    """Decode every file (in parallel) into a .npy written atomically, row after row, so the
    decoding process holds one image at a time however large the tree; unreadable files are
    recorded as bad (a zero image, never used) or, with dataset.skip_bad=false, stop the run."""
    from tqdm import tqdm

    shape = (len(listing.files), *cfg.input_shape)
    jobs = [(str(listing.root / f), tuple(cfg.input_shape), cfg.resize) for f in listing.files]
    workers = min(cfg.workers or os.cpu_count() or 1, len(jobs))
    bad: list[tuple[str, str]] = []

    def write(f) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(f, header)
        blank = bytes(int(np.prod(shape[1:])))
        with tqdm(total=len(jobs), desc=f"decoding {len(jobs):,} images", unit="img", disable=None) as bar, \
                _decoded(jobs, workers) as results:
            for file, result in zip(listing.files, results):
                if isinstance(result, str):
                    _check_bad(listing.root / file, result, cfg.skip_bad)
                    bad.append((file.as_posix(), result))
                f.write(blank if isinstance(result, str) else result.tobytes())
                bar.update()

    write_file(path, write)
    write_text(meta_path, json.dumps({"files": len(jobs), "bad": bad, "stats": {}}))


@contextlib.contextmanager
def _decoded(jobs: list, workers: int):
    """Each job's result, in order: decoded in `workers` processes (forked where the system can:
    no re-import of torch), or here for one."""
    if workers == 1:
        yield map(_decode_one, jobs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(workers, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        yield pool.imap(_decode_one, jobs, chunksize=32)


def _check_bad(path: Path, problem: str, skip_bad: bool) -> None:
    if problem.startswith("\0"):
        raise UserError(problem[1:] + " (or set dataset.resize=shorter_side_then_center_crop, stretch or pad)")
    if not skip_bad:
        raise UserError(f"{path} is not a readable image ({problem}); remove it, or set dataset.skip_bad=true to skip "
                        "such files with a warning")


def _decode_one(job: tuple[str, tuple[int, ...], str | None]) -> np.ndarray | str:
    """One file's pixels as (C, H, W), or why it could not be read (a worker's job)."""
    path, shape, resize = job
    try:
        pixels = images.decode_array(Path(path), shape, resize, draft=True)  # speed (docs/use-a-model.md)
    except images.Unreadable as err:
        return str(err)
    except UserError as err:  # a size that no resize policy fits
        return f"\0{err}"
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


# ---------------------------------------------------------------------------- splits and statistics


def bad_files(cache: Cache) -> set[str]:
    return {name for name, _ in cache.meta["bad"]}


def split_rows(cfg: DictConfig, listing: Listing, bad: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cache rows of train, val and test, the `bad` files left out: the tree's own split folders
    where it has them, the rest drawn per class (stratified) with dataset.split_seed."""
    good = np.array([f.as_posix() not in bad for f in listing.files], dtype=bool)
    return draw_splits(cfg, listing.labels, listing.splits, good)


def draw_splits(cfg: DictConfig, labels: np.ndarray, splits: np.ndarray,
                good: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of train, val and test among the `good` ones: those `splits` gives (index into SPLITS, or
    -1 for none), the rest held out of train per class (stratified), dataset.val_size and test_size
    of it (a count or a fraction), with dataset.split_seed."""
    given = {name: np.flatnonzero((splits == i) & good) for i, name in enumerate(SPLITS)}
    pool = given["train"] if (splits >= 0).any() else np.flatnonzero(good)
    rng = np.random.default_rng(cfg.split_seed)
    rows = {"train": pool}
    for name in ("val", "test"):
        if len(given[name]):
            rows[name] = given[name]
            continue
        taken = _stratified(rows["train"], labels, cfg[f"{name}_size"], rng)
        rows[name] = taken
        rows["train"] = np.setdiff1d(rows["train"], taken)
    if not len(rows["train"]):
        raise UserError(f"dataset.root={cfg.root}: no training images left after holding out val and test; lower "
                        "dataset.val_size / dataset.test_size")
    return rows["train"], rows["val"], rows["test"]


def _stratified(rows: np.ndarray, labels: np.ndarray, size: int | float, rng: np.random.Generator) -> np.ndarray:
    """`size` of the rows (a count, or a fraction), each class giving its share (largest remainders)."""
    if not size:
        return rows[:0]
    count = round(size * len(rows)) if isinstance(size, float) else size
    if count >= len(rows):
        raise UserError(f"a held-out size of {size} leaves no training images (there are {len(rows)}); lower "
                        "dataset.val_size / dataset.test_size")
    classes = [rows[labels[rows] == c] for c in np.unique(labels[rows])]
    quotas = np.array([len(c) for c in classes]) * count / len(rows)
    shares = np.floor(quotas).astype(int)
    for c in np.argsort(-(quotas - shares), kind="stable")[:count - shares.sum()]:
        shares[c] += 1
    taken = [rng.permutation(c)[:k] for c, k in zip(classes, shares)]
    return np.sort(np.concatenate(taken))


def stats(cache: Cache, rows: np.ndarray, cfg: DictConfig) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training rows in [0, 1], computed once per split and
    kept in the cache's record."""
    key = f"{cfg.val_size}/{cfg.test_size}/{cfg.split_seed}"
    if key not in cache.meta["stats"]:
        total = squares = 0.0
        for start in range(0, len(rows), 1024):  # a chunk at a time: the cache may not fit in memory
            chunk = cache.images[rows[start:start + 1024]].astype(np.float64) / 255
            total = total + chunk.sum(axis=(0, 2, 3))
            squares = squares + (chunk ** 2).sum(axis=(0, 2, 3))
            release(cache.mapping)
        n = len(rows) * cache.images.shape[2] * cache.images.shape[3]
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0))
        std = np.where(std >= 1e-6, std, 1.0)  # a constant channel (up to rounding noise): nothing to scale
        cache.meta["stats"][key] = [mean.round(6).tolist(), std.round(6).tolist()]
        write_text(cache.path.with_suffix(".json"), json.dumps(cache.meta))
    mean, std = cache.meta["stats"][key]
    return mean, std


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 4) for v in values]


# ---------------------------------------------------------------------------- reading


def read(cfg: DictConfig, device: torch.device | str, listing: Listing, cache: Cache):
    """(train, val, test) as (images, labels) with images on `device`, or, for a cache larger
    than dataset.max_memory_gb, as MappedSamples read batch by batch; and the bad-file count.
    `listing` and `cache` are what `resolve` returned."""
    rows = split_rows(cfg, listing, bad_files(cache))
    labels = torch.from_numpy(listing.labels)
    budget = (cfg.max_memory_gb if cfg.max_memory_gb is not None else default_memory_gb()) * 1e9
    mapped = cache.images.nbytes > budget
    if mapped:
        log.info("image cache %.2f GB > dataset.max_memory_gb=%.2f: batches are read from the memory map",
                 cache.images.nbytes / 1e9, budget / 1e9)
    array = torch.from_numpy(cache.images)
    splits = []
    for r in rows:
        index = torch.from_numpy(r)
        samples = MappedSamples(array, cache.mapping, index, torch.device(device), budget) if mapped \
            else array[index].to(device)
        splits.append((samples, labels[index].to(device)))
        release(cache.mapping)  # loaded: the map's pages need not stay in memory too
    return splits, len(cache.meta["bad"])


def release(mapping: mmap.mmap) -> None:
    """Drop the pages of a private, never-written map from this process's memory; a later read
    brings them back from the file (or the page cache)."""
    if hasattr(mapping, "madvise"):  # not on Windows
        mapping.madvise(mmap.MADV_DONTNEED)


def default_memory_gb() -> float:
    try:
        return MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 4.0


class MappedSamples:
    """A split's rows of a memory-mapped cache, indexed like a tensor: only the samples asked
    for are read, and they arrive on the device (pinned and non-blocking to a GPU). Pages read
    are dropped again each time about half the memory budget has been read, so a cache larger
    than memory never fills it."""

    def __init__(self, array: Tensor, mapping: mmap.mmap, rows: Tensor, device: torch.device, budget: float) -> None:
        self.array, self.mapping, self.rows, self.device, self.budget = array, mapping, rows, device, budget
        self.shape = torch.Size((len(rows), *array.shape[1:]))
        self.dtype = array.dtype
        self._read = 0

    def __len__(self) -> int:
        return len(self.rows)

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: int | slice | Tensor) -> Tensor:
        rows = self.rows[key.cpu() if isinstance(key, Tensor) else key]
        batch = self.array[rows]
        self._read += batch.nbytes
        if self._read > self.budget / 2:
            release(self.mapping)
            self._read = 0
        return runtime.to_device(batch, self.device)
