"""Checkpoints: written atomically, read as data only.

A checkpoint is a dict of tensors, numbers, strings and the resolved config as plain
containers, so `torch.load(weights_only=True)` reads it and a shared checkpoint can
never run code when it is opened.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from cnn_cli.errors import UserError


def save(state: dict[str, Any], path: Path) -> None:
    """Write atomically: a reader (or a crash) sees the previous checkpoint or the new one,
    never a torn file."""
    _atomic_write(path, lambda f: torch.save(state, f))


def write_text(path: Path, text: str) -> None:
    """Write a small text file (metrics.json) atomically, like the checkpoints."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def write_file(path: Path, write: Callable[[BinaryIO], Any], check: Callable[[Path], Any] | None = None) -> None:
    """Write any file atomically; `check(temporary path)` may inspect the complete file first
    and raise to keep nothing (cnn-export loads what it wrote with its own runtime)."""
    _atomic_write(path, write, check)


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any], check: Callable[[Path], Any] | None = None) -> None:
    """Temporary file in the same folder, flush, fsync, (check,) rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's zip writer re-raises a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise UserError(f"cannot write {path}: {cause.strerror or cause}; {kept}. Free some space (or fix the "
                        "permissions), then continue with cnn-train resume=<the run folder>") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable (folders cannot be opened on Windows)
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # some network filesystems refuse fsync on a folder
            pass


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files of a process killed mid-write (never read: the rename is
    what publishes a checkpoint). Called as a run starts training in its folder."""
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)


def resolve(path: str | Path, key: str) -> Path:
    """A run folder means its checkpoints/last.pt; a file is taken as it is."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "checkpoints" / "last.pt"
    if not p.is_file():
        raise UserError(f"{key}={path}: no checkpoint there; give a run folder (outputs/DATE/TIME) "
                        "or a .pt file such as outputs/DATE/TIME/checkpoints/last.pt")
    return p


def load(path: str | Path, key: str = "checkpoint") -> dict[str, Any]:
    """Read a checkpoint on the CPU, refusing anything that is not plain data."""
    p = resolve(path, key)
    if not zipfile.is_zipfile(p):  # every torch.save since PyTorch 1.6 writes a zip archive
        raise UserError(f"{key}={path}: {p} is not a readable checkpoint (empty, truncated, or not a cnn-cli checkpoint)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if not found:
            raise UserError(f"{key}={path}: {p} is not a readable checkpoint (its contents do not unpickle)") from None
        raise UserError(f"{key}={path}: refused to open {p}: it holds objects that are not plain data "
                        f"({found.group(1)}), and loading it could run code; open it only if you trust where it "
                        "came from") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError, IndexError) as err:
        reason = re.split(r"\. ", str(err).strip().splitlines()[0])[0][:160]
        raise UserError(f"{key}={path}: {p} is not a readable checkpoint (truncated or not a cnn-cli "
                        f"checkpoint: {reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError(f"{key}={path}: {p} is not a cnn-cli checkpoint (no model weights and config in it)")
    return state
