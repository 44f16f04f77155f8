"""Sweeps: Hydra multirun with the basic and joblib launchers, an Optuna search, submitit,
each a real cnn-train subprocess with tiny settings; and the table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_train import TINY, cnn

pytestmark = pytest.mark.e2e  # every test here starts cnn-train or friends

SWEEP = [*TINY, "trainer.epochs=1"]


def hparams_of(run: Path) -> dict:
    """The hparams a job wrote into its own TensorBoard run, with the final metrics."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert events.PluginTagToContent("hparams"), f"no hparams in {run}"
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("hparam/")}


def table_rows(stdout: str) -> dict[str, str]:
    """The sweep table's rows, job number -> the rest of the line."""
    lines = stdout[stdout.index("\nsweep "):].splitlines()
    return {line.split()[0]: line for line in lines if line.strip()[:1].isdigit()}


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", *SWEEP, "optimizer.lr=1e12,0.05", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr  # the sweep failed as a whole...
    assert "error: epoch 1, step" in proc.stderr  # ...said why as the job failed...
    assert "Traceback" not in proc.stderr
    rows = table_rows(proc.stdout)  # ...and the table at the end has both jobs
    assert "1 failed" in proc.stdout and set(rows) == {"0", "1"}
    assert "optimizer.lr=1000000000000.0" in rows["0"] and "FAILED: epoch 1, step" in rows["0"]
    assert (tmp_path / "sweep" / "0" / "error.txt").read_text().startswith("epoch 1, step")
    assert not (tmp_path / "sweep" / "0" / "metrics.json").exists()
    metrics = json.loads((tmp_path / "sweep" / "1" / "metrics.json").read_text())  # the other job ran to the end
    assert metrics["steps"] == 4
    assert f"val {metrics['best_val_acc']:.4f}  test {metrics['test_acc']:.4f}" in rows["1"]
    assert "best validation accuracy: job 1" in proc.stdout


def test_joblib_runs_two_jobs_each_with_hparams(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP, "trainer.num_threads=1",
               "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran them
    rows = table_rows(proc.stdout)
    for job, lr in (("0", 0.01), ("1", 0.1)):
        run = tmp_path / "sweep" / job
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == lr
        metrics = json.loads((run / "metrics.json").read_text())
        hparams = hparams_of(run)  # the HParams tab compares the jobs on these
        assert hparams["hparam/test_acc"] == pytest.approx(metrics["test_acc"])
        assert hparams["hparam/best_val_acc"] == pytest.approx(metrics["best_val_acc"])
        assert f"optimizer.lr={lr}" in rows[job]


def test_an_optuna_search_writes_its_best_trial(tmp_path: Path) -> None:
    searched = [o for o in SWEEP if not o.startswith("trainer.batch_size=")]  # the search chooses it
    proc = cnn("cnn-train", "-m", "hparams_search=lenet5_optuna", "hydra.sweeper.n_trials=3", *searched,
               "model=mlp", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    trials = {job: json.loads((tmp_path / "sweep" / str(job) / "metrics.json").read_text()) for job in range(3)}
    # the search maximised what cnn-train returns: the best validation accuracy
    assert result["best_value"] == pytest.approx(max(t["best_val_acc"] for t in trials.values()))
    assert set(result["best_params"]) == {"optimizer.lr", "trainer.batch_size", "optimizer.weight_decay"}
    assert 0.003 <= result["best_params"]["optimizer.lr"] <= 0.3
    assert len(table_rows(proc.stdout)) == 3


def test_submitit_local_runs_a_job(tmp_path: Path) -> None:
    cnn("cnn-train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *SWEEP,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())["steps"] == 4
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # submitit ran it as a job
