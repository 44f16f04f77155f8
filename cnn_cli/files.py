"""Writing files safely: every file is written whole or not at all, never through a symlink,
and a file a user names (cnn-predict output=, cnn-export output=) never lands on a checkpoint
or inside the folders of a run that only cnn-train writes, so no output can destroy a run.
Every command that writes a file named by the user asks output_file first."""

from __future__ import annotations

import os
import re
import shlex
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from cnn_cli.errors import UserError

RUN_PARTS = ("checkpoints", "tb", ".hydra")  # a run's own folders: its checkpoints, events and records
RUN_MARKS = (*RUN_PARTS, "train.log", "metrics.json")  # what makes a folder a run's


def output_file(value: str, key: str = "output") -> Path:
    """The file `key=value` names, checked: not a folder, not a device, pipe or socket (which
    the atomic rename would replace), not a checkpoint, and not inside a run's checkpoints/,
    tb/ or .hydra/."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise UserError(f"{key}={value} is a folder; give a file name in it, e.g. {key}={path / 'NAME'}")
    if path.exists() and not path.is_file():
        raise UserError(f"{key}={value} is not a regular file (a device, pipe or socket); give a file name")
    if is_checkpoint(path):
        raise UserError(f"{key}={value} is a checkpoint, which writing there would destroy; give another file name")
    run, part = _run_part(path)
    if run is not None:
        raise UserError(f"{key}={value} is inside the run folder's {part}/, which only cnn-train writes; give a file "
                        f"outside it, e.g. {key}={run / path.name}")
    return path


def is_checkpoint(path: Path) -> bool:
    """Whether `path` holds what torch.save writes (a zip with a data.pkl), not an exported
    TorchScript or torch.export file (which may be written over by the next export)."""
    try:
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = {name.split("/", 1)[-1] for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return False
    return "data.pkl" in names and "constants.pkl" not in names


def _run_part(path: Path) -> tuple[Path | None, str]:
    """The run folder and its part (checkpoints, tb, .hydra) that `path` is inside, if any;
    symbolic links on the way are followed, as the write would."""
    real = Path(os.path.realpath(path.parent))
    for folder in (real, *real.parents):
        if folder.name in RUN_PARTS and any(os.path.lexists(folder.parent / mark) for mark in RUN_MARKS
                                            if mark != folder.name):
            return folder.parent, folder.name
    return None, ""


def write_text(path: Path, text: str) -> None:
    """Write a small text file (metrics.json) atomically, like the checkpoints."""
    write_file(path, lambda f: f.write(text.encode()))


def write_file(path: Path, write: Callable[[BinaryIO], Any], check: Callable[[Path], Any] | None = None) -> None:
    """Write any file atomically: temporary file in the same folder, flush, fsync, rename over
    `path`. `check(temporary path)` may inspect the complete file first and raise to keep
    nothing (cnn-export loads what it wrote with its own runtime).

    The temporary file is created exclusively (O_EXCL, no symlink followed: mkstemp) and the
    rename replaces whatever is at `path`, a planted symlink included, instead of writing
    through it: a run folder shared by someone else cannot steer a write to another file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path.parent)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.chmod(fd, 0o644)  # mkstemp's 0600 would hide checkpoints from the rest of a team
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch's zip writer re-raises a failed write as RuntimeError
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        run = path.parent.parent
        then = (f"continue with cnn-train resume={shlex.quote(str(run))}" if path.parent.name == "checkpoints"
                and (path.parent / "last.pt").exists() else "try again")
        raise UserError(f"cannot write {path}: {cause.strerror or cause}; {kept}. Free some space (or fix the "
                        f"permissions), then {then}") from None
    except BaseException:
        if tmp is not None:
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


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")  # .NAME.PID.RANDOM.tmp, as write_file names them


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files that processes killed mid-write (SIGKILL, a power cut) left in
    `folder`: never read (the rename is what publishes a file), and never those of a process
    still alive, which may be writing one now. Every write_file starts with it."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        found = _TEMPORARY.match(name)
        if found and not _alive(int(found.group(1))):
            (folder / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):  # another user's process, or not a PID at all: leave it
        return True
    return True
