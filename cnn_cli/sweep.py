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
    """Print the table of the sweep's jobs; returns how many failed."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*map(set, overrides.values())) if jobs else set()
    rows, failed, best = [], 0, None
    for job in jobs:
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            val = metrics["best_val_acc"]  # null with dataset.val_size=0: nothing to choose by
            result = f"val {'none' if val is None else f'{val:.4f}'}  test {metrics['test_acc']:.4f}"
            if val is not None and (best is None or val > best[1]):
                best = (job.name, val)
        else:
            failed += 1
            error = job / ERROR_FILE
            result = "FAILED: " + (error.read_text().strip() if error.is_file() else "no result; see its train.log")
        rows.append((job.name, " ".join(o for o in overrides[job] if o not in shared) or "-", result))
    width = max([len(r[1]) for r in rows] + [9])
    lines = [f"sweep {sweep_dir}: {len(rows)} jobs, {failed} failed",
             f"  every job: {' '.join(o for o in overrides[jobs[0]] if o in shared)}" if shared else "",
             f"  job  {'overrides':<{width}}  result"]
    lines += [f"  {name:<3}  {what:<{width}}  {result}" for name, what, result in rows]
    if best is not None:
        lines.append(f"best validation accuracy: job {best[0]} ({best[1]:.4f})")
    print("\n".join(line for line in lines if line))
    return failed


def _overrides(job: Path) -> list[str]:
    path = job / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


def record_failure(message: str, err: BaseException) -> None:
    """A failed job's one line goes into its folder for the table, its traceback into its log."""
    from hydra.core.hydra_config import HydraConfig

    (Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE).write_text(message + "\n")
    logging.getLogger("cnn_cli").error("job failed: %s", message, exc_info=err)
