"""Output that cannot stop a run: a closed terminal pipe turns writes into no-ops.

`cnn-train ... | tee log` and Ctrl-C: the terminal's SIGINT reaches tee too, which exits,
and every later write to the pipe (the progress bar, the "saving" warning, the resume hint)
raises BrokenPipeError, inside the training loop, before the checkpoint is saved. Writes
here catch that once, point the stream's file descriptor at /dev/null, and carry on, so
the save and the exit status (130) happen whatever the reader did. The log file keeps
everything.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class Unbreakable:
    """A text stream whose writes never fail because the reader went away."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except (BrokenPipeError, ConnectionResetError):
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (BrokenPipeError, ConnectionResetError):
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def protect() -> None:
    """Wrap stdout and stderr before Hydra's logging and tqdm pick them up."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, Unbreakable):
            setattr(sys, name, Unbreakable(stream))
