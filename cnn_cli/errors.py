"""Errors a person can fix, and how the command-line tools report them."""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from typing import Callable, TypeVar

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException,
                              ValidationError)

T = TypeVar("T")

EXIT_BAD_INPUT = 2
# Whether the person asked for tracebacks (HYDRA_FULL_ERROR=1); kept in our own variable
# because cli.main sets HYDRA_FULL_ERROR itself, and passed on to sweep workers.
TRACEBACK_ENV = "CNN_CLI_FULL_ERROR"


class UserError(Exception):
    """Bad input (config, file, path): printed as one line with the fix, exit status 2."""


class DataMissing(UserError):
    """A dataset's files are not where they were looked for: `looked_in` names the folder, so
    that a tool with its own way to point at data (cnn-eval's root=) can say it."""

    def __init__(self, message: str, looked_in: str) -> None:
        super().__init__(message)
        self.looked_in = looked_in


class Refused(BaseException):
    """A UserError raised where Hydra would catch an Exception and only warn (its callbacks):
    carried past it to the command's top level, which reports the UserError inside."""


# what is reported as one line: our own errors, and Hydra's, OmegaConf's and the file
# system's, which are about the input or the machine, not a bug
REPORTED = (UserError, HydraException, OmegaConfBaseException, OSError)


def want_traceback() -> bool:
    """The person asked for tracebacks with HYDRA_FULL_ERROR=1."""
    return os.environ.get(TRACEBACK_ENV, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn bad input found while the job runs into one line on stderr and exit status 2.

    HYDRA_FULL_ERROR=1 keeps the traceback, as it does for Hydra's own errors. In a sweep
    the failure is also written into the job's folder (for the table at the end) and
    passed on, so Hydra records it and runs the other jobs.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            reported = isinstance(err, REPORTED) and not want_traceback()
            if not _in_multirun():
                if reported:
                    print(f"error: {describe(err)}", file=sys.stderr)
                    sys.exit(EXIT_BAD_INPUT)
                raise
            from cnn_cli.sweep import record_failure

            message = describe(err) if reported else f"{type(err).__name__}: {first_line(err)}"
            print(f"error: {message}", file=sys.stderr)  # one line per job; the traceback goes into its log
            record_failure(message, err)
            raise

    return wrapper


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def first_line(err: BaseException) -> str:
    """An exception's message without the lines (C++ frames, context) some of them carry; its
    type's name when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


MAX_QUOTED = 1000  # characters of one value quoted from the input (a 900 kB layer name) in a message
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LONG = re.compile(r"\S{%d,}" % (MAX_QUOTED + 1))


def printable(text: str) -> str:
    """`text` as one line: a newline or other control character in a name (a file, a class, a
    value) shown escaped, so it cannot end the line and forge another ("error: ..."), and a
    value longer than MAX_QUOTED cut, saying how long it was."""
    text = _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)
    return _LONG.sub(lambda m: f"{m[0][:MAX_QUOTED]}...({len(m[0]):,} characters)", text)


def describe(err: Exception) -> str:
    """One line for any REPORTED error: the key or file, and the fix."""
    return printable(_explain(err))


def _explain(err: Exception) -> str:
    if isinstance(err, UserError):
        return str(err)
    cause = err.__cause__ or err
    first = first_line(err)
    if isinstance(err, MissingConfigException) and err.options is not None and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return (f"{group}={name}: no such {group} config; available: {', '.join(sorted(err.options))} "
                f"(your own go in DIR/{group}/NAME.yaml, with --config-dir DIR)")
    if isinstance(err, OverrideParseException):
        return f"'{err.override}': {first}; see https://hydra.cc/docs/advanced/override_grammar/basic/"
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:  # a key the schema does not have
        parent, _, name = key.rpartition(".")
        known = [str(k) for k in getattr(cause, "parent_node", None) or {}]
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?" if near else f"valid keys: {', '.join(known)}"
        return f"{key}: no such key; {hint}"
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} must be given, e.g. {key}=VALUE on the command line"
    if isinstance(cause, ValidationError) and key:
        return f"{key}: {first_line(cause)}"
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror}; check that the path exists and that you may use it"
    return first
