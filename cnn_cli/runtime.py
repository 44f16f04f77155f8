"""Where and how tensors are computed: device choice, precision, determinism."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys

import torch

from cnn_cli import cpu_use
from cnn_cli.errors import UserError

PRECISIONS = ("32", "bf16", "16")


def resolve_device(name: str) -> torch.device:
    """auto picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no data, or not ours
        raise UserError(f"trainer.device={name} is not a device to train on; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"trainer.device={name} but no CUDA GPU is visible here; use trainer.device=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"trainer.device={name} but only {torch.cuda.device_count()} CUDA GPU(s) are "
                            f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"trainer.device={name} but MPS is not available here; use trainer.device=auto or cpu")
    return device


def check_precision(precision: str, device: torch.device) -> str:
    precision = str(precision)
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision} is not one of {', '.join(PRECISIONS)}")
    if precision == "16" and device.type != "cuda":
        raise UserError(f"trainer.precision=16 needs a CUDA GPU, not {device.type}; use trainer.precision=bf16 or 32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("trainer.precision=bf16: this GPU has no bfloat16; use trainer.precision=16 or 32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16 and 16; plain float32 otherwise."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without waiting for the work queued there: to a GPU through
    pinned memory, asynchronously (a copy from ordinary memory first waits for every kernel
    queued before it, so a copy each step would keep the host from running ahead)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# What trainer.channels_last=true does for each batch rank, in one place. 4-D batches
# (N, C, H, W) go channels-last (NHWC): faster on CPU and GPU (docs/performance.md). 5-D
# batches (N, C, D, H, W) go channels_last_3d (NDHWC): faster for voxel_cnn3d on this
# project's CPU and on a GPU (docs/performance.md). Measure a device with
# `python benchmarks/memory_format.py --device cuda` and drop the 5 here if it loses there.
# 3-D batches (N, C, L) have no channels-last format and stay contiguous.
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def memory_format(channels_last: bool, sample_rank: int) -> torch.memory_format:
    """The memory format for batches of samples with `sample_rank` axes (C, ... ) and for the
    model's weights: channels-last where trainer.channels_last asks and it applies."""
    return CHANNELS_LAST.get(sample_rank + 1, torch.contiguous_format) if channels_last else torch.contiguous_format


def to_memory_format(model: torch.nn.Module, fmt: torch.memory_format) -> torch.nn.Module:
    """Put the model's weights of the format's rank (conv kernels) in `fmt`. Not Module.to:
    it converts every 4-D and 5-D tensor, and a layernorm's 4-D weight in a 3-D network has
    no channels_last_3d layout."""
    rank = next((n for n, channels_last in CHANNELS_LAST.items() if channels_last == fmt), None)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == rank:  # a copy with fmt's strides: .contiguous(memory_format=fmt) keeps a kernel
                # with one input channel as it is, since its strides fit both formats, and PyTorch then
                # reads it as contiguous: the conv runs in NCHW, 1.6x slower on MNIST (docs/performance.md)
                param.data = torch.empty_like(param.data, memory_format=fmt).copy_(param.data)
    return model


def make_deterministic(on: bool) -> None:
    """Deterministic kernels, so a resumed run repeats an uninterrupted one bit for bit."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if on != torch.are_deterministic_algorithms_enabled():  # the call imports torch._dynamo, slow to import
        torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.benchmark = not on


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


TAKEN_FROM = 0.25  # of a core: other work that uses more than this of a core takes it


def auto_threads(cores: int, busy: float, processes: int = 1) -> int:
    """Threads for one of `processes` training processes: the cores that other work leaves
    free, shared among them, and at least one. A core counts as taken once other work uses
    more than a quarter of it, not a half: a thread on a core that is busy even part of the
    time makes every OpenMP barrier wait for it, so one thread too many costs far more than
    one too few (on 2 cores, two threads ran 3x slower than one on a busy machine and at most 1.7x
    faster on an idle one, docs/performance.md; on more cores one more thread gains less),
    while an idle machine's own background work stays well below a quarter of a core."""
    free = cores - math.ceil(busy - TAKEN_FROM)
    return max(1, min(cores, free) // max(1, processes))


def set_threads(setting: int | str | None, processes: int = 1, resumed_with: int | None = None) -> str:
    """Apply trainer.num_threads and say what was chosen and why: N forces N; null keeps
    PyTorch's choice; auto keeps OMP_NUM_THREADS if it is set (torchrun sets it), else the
    count a deterministic run it resumes trained with (`resumed_with`: the thread count sets
    the order of a float sum, so another count would not repeat the run bit for bit), else
    fits the cores that other work leaves free now (cpu_use.busy_elsewhere)."""
    if setting == "auto":
        if os.environ.get("OMP_NUM_THREADS"):
            return f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
        cores = usable_cores()
        if isinstance(resumed_with, int) and 0 < resumed_with <= cores:
            torch.set_num_threads(resumed_with)
            return (f"{resumed_with} thread(s) (trainer.num_threads=auto, trainer.deterministic=true: as the run it "
                    "resumes, so it repeats bit for bit; trainer.num_threads=N forces N)")
        busy, measured = cpu_use.busy_elsewhere()
        threads = auto_threads(cores, busy, processes)
        torch.set_num_threads(threads)
        shared = f", shared by {processes} processes" if processes > 1 else ""
        return (f"{threads} thread(s) (trainer.num_threads=auto: {cores} cores, {measured}{shared}; "
                "trainer.num_threads=N forces N)")
    if setting is not None:
        torch.set_num_threads(setting)
        return f"{setting} thread(s) (trainer.num_threads={setting})"
    return f"{torch.get_num_threads()} thread(s) (trainer.num_threads=null: PyTorch's choice)"


# glibc's malloc settings (malloc.h): freed memory stays in the process up to this much, and
# blocks up to this size come from that memory (32 MiB is the most glibc accepts)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED, _FROM_HEAP_UP_TO = 256 << 20, 32 << 20


def reuse_freed_memory() -> bool:
    """Let each training step reuse the memory the last one freed. glibc's malloc maps a
    large block (a batch's activations) afresh from the system and unmaps it when freed,
    which its own adaptive threshold prevents only for some allocation patterns: then every
    step page-faults on all of its memory again (for the MNIST speedrun 700 faults and 2.6 ms
    of system time a step on a busy machine, docs/performance.md). Linux with glibc only;
    MALLOC_* or GLIBC_TUNABLES in the environment are the user's and stay as they are.
    Returns whether the setting was made."""
    if not sys.platform.startswith("linux") or any(key.startswith(("MALLOC_", "GLIBC_TUNABLES"))
                                                   for key in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # another C library (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _FROM_HEAP_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED))
