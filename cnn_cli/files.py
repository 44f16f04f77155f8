"""Where a command may write a file it was asked for (cnn-predict output=, cnn-export output=):
never over a checkpoint and never into the folders of a run that only cnn-train writes, so
no output can destroy a run. Every command that writes a file named by the user asks here."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

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
