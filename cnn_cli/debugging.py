"""The debug= presets' machinery (configs/debug/): the overfit check's verdict
(trainer.overfit_batches) and the profiler (trainer.profile_steps)."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

log = logging.getLogger(__name__)

OVERFIT_LOSS = 0.01  # a training loss below this on a few batches: the network can learn them


def overfitted(history: list[dict[str, Any]], trainer: Any) -> bool:
    """debug=overfit: the last epoch's training loss is near zero, so the check is done."""
    return bool(trainer.overfit_batches and history and history[-1]["train_loss"] < OVERFIT_LOSS)


def overfit_verdict(history: list[dict[str, Any]], trainer: Any) -> tuple[bool, str]:
    """Whether the overfit check passed, and the line that says so."""
    first, last, batches = history[0]["train_loss"], history[-1]["train_loss"], trainer.overfit_batches
    if overfitted(history, trainer):
        return True, (f"overfit check PASSED: the training loss on the same {batches} batches fell from {first:.4f} "
                      f"to {last:.4f} (< {OVERFIT_LOSS}) in {len(history)} epochs")
    return False, (f"overfit check FAILED: the training loss on the same {batches} batches went from {first:.4f} to "
                   f"{last:.4f} in {len(history)} epochs, not below {OVERFIT_LOSS}; a network that cannot memorise a "
                   "few batches has a bug: look at the labels, the learning rate, the last layer's size, the "
                   "normalisation, a missing nonlinearity")


@contextlib.contextmanager
def profiled(steps: int | None, folder: Path, device: torch.device) -> Iterator[Callable[[], None]]:
    """torch.profiler over `steps` training steps (after one to wait and one to warm up),
    its trace written into `folder` for Perfetto or TensorBoard; yields what to call after
    each step (nothing to do without `steps`)."""
    if not steps:
        yield lambda: None
        return
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=1, warmup=1, active=steps, repeat=1)
    with torch.profiler.profile(activities=activities, schedule=schedule, record_shapes=True, profile_memory=True,
                                on_trace_ready=torch.profiler.tensorboard_trace_handler(str(folder))) as profiler:
        yield profiler.step
    traces = sorted(folder.glob("*.pt.trace.json"))
    if not traces:
        log.warning("profile: the run ended before %d steps were profiled (it needs %d training steps)", steps,
                    steps + 2)
        return
    log.info("profile of %d training steps: %s\n  open it at https://ui.perfetto.dev (Open trace file), or: "
             "pip install torch-tb-profiler; tensorboard --logdir %s (the PYTORCH_PROFILER tab)", steps, traces[-1],
             folder.parent)
