"""Work bounded by what it costs, checked before it starts: bytes against the memory this
machine has, nesting before a recursive reader meets it, a record's expanded size before it
is unpacked. A small hostile input (a config, a checkpoint, an argument) is refused in one
line instead of hanging the machine or being killed for running out of memory."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from cnn_cli.errors import UserError

MAX_NESTING = 100  # brackets in one command-line value, levels in a stored config: real ones stay far below
MAX_NODES = 1_000_000  # values in a stored config (a real one holds a few hundred)
MAX_EXPANSION = 100  # how many times larger than stored a checkpoint's member may unpack (torch stores them as is)


ALWAYS_FITS = 64 << 20  # bytes any machine that runs torch has free
MAX_CLASSES = 100_000  # far above any real label set (ImageNet-21k has 21,841), so a typo cannot fill memory
MAX_SEED = 2**32 - 1  # numpy's range; a seed times the epoch stride stays in torch's 64 bits


def check_seed(key: str, seed: int) -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{key}={seed} must be a whole number from 0 to {MAX_SEED:,}")


def available_memory() -> int:
    """Bytes of memory free for a new allocation now (Linux: MemAvailable), else the machine's total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no such query here: no bound
        return 1 << 62


def check_memory(needed: int, what: str, fix: str) -> None:
    """Refuse to allocate `needed` bytes that the machine does not have free."""
    if needed < ALWAYS_FITS:  # not worth reading the system's figures (the builder asks at every layer)
        return
    free = available_memory()
    if needed > free:
        raise UserError(f"{what} needs {needed / 1e9:.1f} GB of memory, more than the {free / 1e9:.1f} GB free on "
                        f"this machine; {fix}")


def nesting(text: str) -> int:
    """The deepest bracket nesting ([, {, ( ) in a command-line value, without parsing it."""
    depth = deepest = 0
    for char in text:
        if char in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]})":
            depth -= 1
    return deepest


def check_arguments(args: list[str]) -> None:
    """Command-line values nested deeper than any config needs (Hydra's parser recurses per level)."""
    for arg in args:
        if nesting(arg) > MAX_NESTING:
            key = arg.partition("=")[0][:80]
            raise UserError(f"{key}=...: the value is nested more than {MAX_NESTING} brackets deep; no config needs "
                            "that many (blocks nest at most 20 deep)")


def check_record(value: Any, what: str) -> None:
    """A stored record (a checkpoint's config) nested at most MAX_NESTING deep with at most
    MAX_NODES values, walked without recursion, before anything recursive reads it."""
    stack, count = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_NESTING or count > MAX_NODES:
            raise UserError(f"{what} is nested more than {MAX_NESTING} deep or holds more than {MAX_NODES:,} values; "
                            "it was not written by cnn-cli")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack += [(child, depth + 1) for child in children]


def check_archive(path: Path, what: str) -> None:
    """A checkpoint's zip members unpack to at most MAX_EXPANSION times their stored size (torch
    stores them uncompressed), and to no more than the memory free, before torch reads them."""
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    for member in members:
        if member.file_size > MAX_EXPANSION * max(member.compress_size, 1 << 20):
            raise UserError(f"{what}: its member {member.filename[:80]!r} expands from {member.compress_size:,} to "
                            f"{member.file_size:,} bytes; torch does not compress checkpoints, so it was not written "
                            "by cnn-cli. Refused unread")
    check_memory(sum(member.file_size for member in members), what, "it is not a checkpoint this machine can read")
