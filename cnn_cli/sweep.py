"""The end of a sweep: one table of every job's overrides and its result or its error.

Read from the job folders (metrics.json, or the error.txt a failed job leaves), so it is
the same whichever launcher ran the jobs: in this process, joblib workers or SLURM.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

ERROR_FILE = "error.txt"
_sweep_dir: Path | None = None  # set when this process starts a multirun


class RecordSweep(Callback):
    """Remembers where the sweep writes its jobs, for the table at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)


def started() -> Path | None:
    """The folder of the sweep this process ran, if it ran one."""
    return _sweep_dir


def report(sweep_dir: Path) -> int:
    """Print the table of the sweep's jobs, best validation accuracy first; returns how many failed."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*map(set, overrides.values())) if jobs else set()
    rows, failed = [], 0
    for job in jobs:
        what = " ".join(o for o in overrides[job] if o not in shared) or "-"
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            rows.append((job.name, what, metrics.get("best_val_acc"), *_result(metrics)))
        else:
            failed += 1
            error = job / ERROR_FILE
            rows.append((job.name, what, None, "", "FAILED: " + (error.read_text().strip() if error.is_file() else
                                                                 "no result; see its train.log"), ""))
    # best validation accuracy first; then the jobs with no validation split; the failed last
    rows.sort(key=lambda r: (r[4].startswith("FAILED"), r[2] is None, -(r[2] or 0), int(r[0])))
    width = max([len(r[1]) for r in rows] + [9])
    params = max([len(r[3]) for r in rows] + [6])
    lines = [f"sweep {sweep_dir}: {len(rows)} jobs, {failed} failed",
             f"  every job: {' '.join(o for o in overrides[jobs[0]] if o in shared)}" if shared else "",
             f"  job  {'overrides':<{width}}  {'params':>{params}}  result"]
    lines += [f"  {name:<3}  {what:<{width}}  {count:>{params}}  {result}{seconds}"
              for name, what, _, count, result, seconds in rows]
    best = rows[0] if rows and rows[0][2] is not None else None
    if best is not None:
        lines.append(f"best validation accuracy: job {best[0]} ({best[2]:.4f}): {best[1]}")
    print("\n".join(line for line in lines if line))
    return failed


def _result(metrics: dict[str, Any]) -> tuple[str, str, str]:
    """A finished job's parameter count, accuracies (the last epoch's training accuracy beside
    the chosen validation and the test one: batchnorm's train-vs-eval gap shows) and wall time."""
    val = metrics["best_val_acc"]  # null with dataset.val_size=0: nothing to choose by
    history = metrics.get("history") or [{}]
    train = history[-1].get("train_acc")
    seconds = sum(row.get("epoch_seconds", 0) + row.get("val_seconds", 0) for row in history)
    result = (f"train {'-' if train is None else f'{train:.4f}'}  val {'none' if val is None else f'{val:.4f}'}  "
              f"test {metrics['test_acc']:.4f}")
    count = metrics.get("params")
    return (f"{count:,}" if count is not None else "", result, f"  {seconds:.0f} s" if seconds else "")


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def record_failure(message: str, err: BaseException) -> None:
    """A failed job's one line goes into its folder for the table, its traceback into its log."""
    from hydra.core.hydra_config import HydraConfig

    (Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE).write_text(message + "\n")
    logging.getLogger("cnn_cli").error("job failed: %s", message, exc_info=err)
