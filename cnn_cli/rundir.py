"""A run folder has one owner.

A new run gets a folder named by what it is and when, outputs/NAME/DATE_TIME, that nobody
else has (created with mkdir, which fails if it exists, so two runs started in the same
second get NAME/DATE_TIME and NAME/DATE_TIME-1); a folder that already
holds a run is refused; and a process that trains in a folder holds a lock on it for its
whole life, released by the operating system however the process ends, so a second
trainer (or a resume while one still runs) is refused while a killed run's folder resumes.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf, read_write

from cnn_cli import distributed, files
from cnn_cli.errors import Refused, UserError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder checks still hold
    fcntl = None

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # the owner's PID, for the message; the lock itself is on the folder
RUN_FILES = (".hydra", "checkpoints", "metrics.json", "train.log", "tb", "profile")  # what makes a folder a run's
_held: dict[Path, int] = {}  # folders this process owns -> the open descriptor holding the lock
# the single run this process started: its folder and Hydra's record in it, so that an attempt
# Hydra itself fails (a full disk while it writes the record) is removed like any bad input
attempt: tuple[Path, str | None] | None = None


_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")  # anything else, "/" first, becomes "-"


def safe_name(text: str, limit: int = 80) -> str:
    """`text` as one folder name: no "/", no "..", no spaces or shell characters, at most `limit` long."""
    return _UNSAFE.sub("-", str(text))[:limit].strip("-_.")


def run_name(name: str) -> str:
    """The run folder's first part (`name`: the experiment's, else MODEL_DATASET), safe as one folder name."""
    return safe_name(name) or "run"


def resumed_run(resume: str | None) -> Path | None:
    """The run folder a resume continues in: one holding checkpoints/last.pt, or the run of
    a .pt in some run's checkpoints/. Anything else (a stray .pt, a typo) is no run folder,
    so the attempt gets a fresh one, which a failed check removes."""
    if not resume:
        return None
    path = Path(resume).expanduser()
    if path.is_dir() and (path / "checkpoints" / "last.pt").is_file():
        return path
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def holds_a_run(folder: Path) -> bool:
    return any(os.path.lexists(folder / name) for name in RUN_FILES)


def claim(folder: Path) -> None:
    """Own `folder` for the life of this process, or say which process does."""
    folder = Path(os.path.abspath(folder))
    if folder in _held or fcntl is None:
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{folder} is in use by another cnn-train (process {_owner(folder)}); wait for it to "
                        "finish, or stop it, then resume") from None
    except OSError as err:  # a file system without locks (some network mounts): train unguarded
        os.close(fd)
        log.warning("cannot lock %s (%s); make sure no other process trains in it", folder, err.strerror)
        return
    _held[folder] = fd
    planted = [name for name in (*RUN_FILES, LOCK_NAME) if os.path.islink(folder / name)]
    if planted:  # a file or a folder: the log, events, records or checkpoints would go wherever it points
        release(folder)
        raise UserError(f"{folder / planted[0]} is a symbolic link; the run would write wherever it points. Remove it "
                        "(or copy the run to a folder of your own), then try again")
    files.write_text(folder / LOCK_NAME, f"{os.getpid()}\n")


def release(folder: Path) -> None:
    folder = Path(os.path.abspath(folder))
    fd = _held.pop(folder, None)
    if fd is not None:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        os.close(fd)


def remove_run(folder: Path) -> None:
    """trainer.keep_run_folder=false (debug=fast): remove what the run wrote, and the folder
    and its parents up to the working folder where that leaves them empty; anything else a
    user keeps there stays."""
    folder = Path(os.path.abspath(folder))
    release(folder)
    for name in RUN_FILES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            path.unlink()
    remove_empty(folder)


def remove_empty(folder: Path) -> None:
    """Remove `folder` and then its parents while they are empty, stopping at the working folder."""
    for path in (folder, *folder.parents):
        if path == Path.cwd() or not path.is_dir() or any(path.iterdir()):
            break
        path.rmdir()


def discard_attempt(run_dir: Path, record: str | None) -> None:
    """Bad input found before training leaves no trace: remove what Hydra wrote for this
    attempt (its .hydra record and log), and the run folder if nothing else is in it."""
    run_dir = Path(os.path.abspath(run_dir))
    release(run_dir)
    start = Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()
    os.chdir(start)  # hydra.job.chdir=true made the run folder the working one: it may be removed now
    if record and record != ".hydra":  # a resume's own record, beside the run's
        shutil.rmtree(run_dir / record, ignore_errors=True)
    elif {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log", LOCK_NAME}:
        shutil.rmtree(run_dir, ignore_errors=True)
        remove_empty(run_dir.parent)  # outputs/NAME/, if this run made it (stops at start, the working folder)


def _owner(folder: Path) -> str:
    try:
        return (folder / LOCK_NAME).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _new_folder(path: Path) -> Path:
    """`path`, or `path-1`, `path-2`, ... : the first that mkdir creates, so no two runs share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1000):
        candidate = path if n == 0 else path.with_name(f"{path.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"{path}: a thousand runs already started there in the same second; choose hydra.run.dir=PATH")


def _start_run(config: DictConfig) -> Path:
    """The folder this run writes, created or checked, and locked."""
    run_dir = Path(config.hydra.run.dir)
    resumed = resumed_run(config.get("resume"))
    if resumed is not None and os.path.abspath(resumed) == os.path.abspath(run_dir):
        claim(run_dir)
        return run_dir
    chosen = not str(OmegaConf.to_container(config.hydra.run, resolve=False)["dir"]).startswith("${cnn_run_dir:")
    if not chosen:
        run_dir = _new_folder(run_dir)
    else:
        _refuse_a_used(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    claim(run_dir)
    if chosen:  # checked again under the lock: another process may have started there meanwhile
        try:
            _refuse_a_used(run_dir)
        except UserError:
            release(run_dir)
            raise
    return run_dir


def never_saved(folder: Path) -> bool:
    """A run's folder without a checkpoint: its run was stopped (killed) before its first save."""
    return holds_a_run(folder) and not (folder / "checkpoints" / "last.pt").is_file()


def never_saved_message(folder: Path) -> str:
    quoted = shlex.quote(str(folder))
    return (f"{folder} holds a run that stopped before it saved its first checkpoint, so there is nothing to resume; "
            f"remove it (rm -r {quoted}) to start there again, or start in a new folder (the run's settings are in "
            f"{folder / '.hydra' / 'overrides.yaml'})")


def _refuse_a_used(run_dir: Path) -> None:
    if run_dir.is_dir() and never_saved(run_dir):
        raise UserError(f"hydra.run.dir={run_dir}: {never_saved_message(run_dir)}")
    if run_dir.is_dir() and holds_a_run(run_dir):
        quoted = shlex.quote(str(run_dir))
        raise UserError(f"hydra.run.dir={run_dir} already holds a run; continue it with cnn-train resume={quoted}, "
                        "or choose a new folder")


class OwnRunFolder(Callback):
    """Claims the run folder before Hydra writes its record and log into it; refuses a sweep
    folder that already holds a sweep (its end table would mix two sweeps)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not distributed.this_process().main:  # the other torchrun processes write nothing
            return
        global attempt
        try:
            run_dir = _start_run(config)
        except (UserError, OSError) as err:  # Hydra would only warn, then write its record into the folder
            raise Refused(err) from None
        attempt = (run_dir, config.hydra.output_subdir)
        with read_write(config.hydra.run):  # the folder mkdir made, for Hydra to write in
            config.hydra.run.dir = str(run_dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
            raise Refused(UserError(f"hydra.sweep.dir={sweep_dir} already holds a sweep; choose a new folder with "
                            "hydra.sweep.dir=PATH (or wait a second for a new default one)"))
