"""Early stopping (trainer.early_stopping) and which epoch is the best.

Both are pure functions of the epoch history, which every checkpoint keeps, so a resumed
run chooses and stops exactly where an uninterrupted one would."""

from __future__ import annotations

from typing import Any

MONITORS = {"val_loss": "lower", "val_acc": "higher"}  # what may be watched, and which way is better


def better(value: float, best: float, monitor: str, min_delta: float = 0.0) -> bool:
    """Whether `value` improves on `best` by more than `min_delta`."""
    return value < best - min_delta if MONITORS[monitor] == "lower" else value > best + min_delta


def improved(row: dict[str, float], history: list[dict[str, Any]], monitor: str) -> bool:
    """Whether this epoch's `row` is the best so far by `monitor` (best.pt follows it)."""
    earlier = [past[monitor] for past in history if monitor in past]
    return monitor not in row or not earlier or all(better(row[monitor], value, monitor) for value in earlier)


def reason_to_stop(history: list[dict[str, Any]], settings: Any, epochs: int) -> str | None:
    """Why the run stops now (`settings.patience` epochs in a row without an improvement of
    `settings.monitor` by more than `settings.min_delta`), or None to go on."""
    if settings.patience is None or not history:
        return None
    monitor, best = settings.monitor, 0
    for i, row in enumerate(history):
        if better(row[monitor], history[best][monitor], monitor, settings.min_delta):
            best = i
    waited = len(history) - 1 - best
    if waited < settings.patience:
        return None
    return (f"early stopping: {monitor} has not improved by more than {settings.min_delta:g} since epoch {best + 1} "
            f"({history[best][monitor]:.4f}), {waited} epoch{'s' * (waited != 1)} "
            f"(trainer.early_stopping.patience={settings.patience}); stopped after epoch {len(history)} of {epochs}")
