"""Errors a person can fix, and how the command-line tools report them."""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input (config, file, path): printed as one line with the fix, exit status 2."""


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a UserError into one line on stderr and exit status 2.

    HYDRA_FULL_ERROR=1 keeps the traceback, as it does for Hydra's own errors. In a sweep
    the error is printed and passed on, so one failed job does not end the others.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            if _in_multirun():  # Hydra records the failed job and runs the others
                raise
            sys.exit(EXIT_BAD_INPUT)

    return wrapper


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
