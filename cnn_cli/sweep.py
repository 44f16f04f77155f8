"""The end of a sweep: one table of every job's overrides and its result or its error.

Read from the job folders (metrics.json, or the error.txt a failed job leaves), so it is
the same whichever launcher ran the jobs: in this process, joblib workers or SLURM.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cnn_cli.rundir import safe_name

ERROR_FILE = "error.txt"
_sweep_dir: Path | None = None  # set when this process starts a multirun


class RecordSweep(Callback):
    """Remembers where the sweep writes its jobs, for the table at the end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _sweep_dir
        _sweep_dir = Path(config.hydra.sweep.dir)


_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][+-]?\d+)")  # 0.1, .5, 1e-3, 3.0e-05


def job_folder(num: int, task: Any, sweep_dir: str, params: Any) -> str:
    """A sweep job's folder: its number, then the values it was given of the keys the sweep
    varies (Hydra's ${hydra.job.num}_${hydra.job.override_dirname}, without the settings every
    job shares, keys by their last part, floats to 4 significant digits), so TensorBoard's run
    names say what each job was: 3_lr=0.1_model=lenet5_bn. The varied keys are the sweeper's
    params (an experiment's or an Optuna search's) and the command line's a,b / range() /
    choice() overrides, read from the multirun.yaml the basic sweeper writes before any job
    starts, whichever process runs it."""
    varied = {str(key) for key in params or {}} | _swept_on_command_line(Path(sweep_dir) / "multirun.yaml")
    parts = []
    for override in map(str, task or []):
        key, _, value = override.partition("=")
        if key.lstrip("+~") in varied:
            parts.append(f"{key.lstrip('+~').rsplit('.', 1)[-1]}={_rounded(value)}")
    name = safe_name("_".join(parts))
    return f"{num}_{name}" if name else str(num)


def _rounded(value: str) -> str:
    """A float to 4 significant digits (an Optuna trial's 0.012345678901 -> 0.01235) for the
    folder's name; the job's config keeps the full value."""
    return f"{float(value):.4g}" if _FLOAT.fullmatch(value) else value


def _swept_on_command_line(multirun_yaml: Path) -> set[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun_yaml.is_file():
        return set()
    try:
        task = OmegaConf.load(multirun_yaml).hydra.overrides.task
        overrides = OverridesParser.create().parse_overrides([str(o) for o in task])
    except Exception:  # noqa: BLE001  an unreadable record: the folder names keep the sweeper's params
        return set()
    return {o.key_or_group for o in overrides if o.is_sweep_override()}


def job_number(folder: Path) -> int | None:
    """The job number a sweep's folder name starts with (None: not a job's folder)."""
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def started() -> Path | None:
    """The folder of the sweep this process ran, if it ran one."""
    return _sweep_dir


def report(sweep_dir: Path) -> int:
    """Print the table of the sweep's jobs, best validation accuracy first; returns how many failed."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and job_number(p) is not None), key=job_number)
    overrides = {job: _overrides(job) for job in jobs}
    shared = set.intersection(*map(set, overrides.values())) if jobs else set()
    rows, failed = [], 0
    for job in jobs:
        what = " ".join(o for o in overrides[job] if o not in shared) or "-"
        if (job / "metrics.json").is_file():
            metrics = json.loads((job / "metrics.json").read_text())
            rows.append((str(job_number(job)), what, metrics.get("best_val_acc"), *_result(metrics)))
        else:
            failed += 1
            error = job / ERROR_FILE
            reason = error.read_text().strip() if error.is_file() else "no result; see its train.log"
            rows.append((str(job_number(job)), what, None, "", f"FAILED: {reason}", ""))
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
    """A failed job's one line goes into its folder for the table; it and its traceback go into
    the job's log file only (the console has the job's one error line, and the table at the end)."""
    from hydra.core.hydra_config import HydraConfig

    (Path(HydraConfig.get().runtime.output_dir) / ERROR_FILE).write_text(message + "\n")
    log = logging.getLogger("cnn_cli")
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "job failed: %s", (message,),
                            (type(err), err, err.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
