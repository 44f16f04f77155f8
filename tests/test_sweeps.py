"""Sweeps: Hydra multirun with the basic and joblib launchers, an Optuna search, submitit,
each a real cnn-train subprocess with tiny settings; and the table printed at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from helpers import TINY, cnn, tiny

pytestmark = pytest.mark.e2e  # every test here starts cnn-train or friends


def hparams_of(run: Path) -> dict:
    """The hparams a job wrote into its own TensorBoard run, with the final metrics."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert events.PluginTagToContent("hparams"), f"no hparams in {run}"
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"] if tag.startswith("result/")}


def job(sweep: Path, num: int) -> Path:
    """The folder of job `num`: its number, then what it varies (3_lr=0.1)."""
    found = [p for p in sweep.iterdir() if p.is_dir() and p.name.split("_", 1)[0] == str(num)]
    assert len(found) == 1, sorted(p.name for p in sweep.iterdir())
    return found[0]


def sessions(run: Path) -> tuple[float, int]:
    """A job's learning rate in its hparams and its end status, read back from its event file
    (which must hold no experiment summary)."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    contents = events.PluginTagToContent("hparams")
    assert set(contents) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(content) for tag, content in contents.items()}
    start, end = data["_hparams_/session_start_info"], data["_hparams_/session_end_info"]
    return start.session_start_info.hparams["optimizer.lr"].number_value, end.session_end_info.status


def table_rows(stdout: str) -> dict[str, str]:
    """The sweep table's rows, job number -> the rest of the line."""
    lines = stdout[stdout.index("\nsweep "):].splitlines()
    return {line.split()[0]: line for line in lines if line.strip()[:1].isdigit()}


def test_a_failing_job_is_reported_and_the_others_finish(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", *TINY, "optimizer.lr=1e12,0.05", f"hydra.sweep.dir={tmp_path / 'sweep'}",
               cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr  # the sweep failed as a whole...
    assert "error: epoch 1, step" in proc.stderr  # ...said why as the job failed...
    assert "Traceback" not in proc.stderr
    rows = table_rows(proc.stdout)  # ...and the table at the end has both jobs
    assert "1 failed" in proc.stdout and set(rows) == {"0", "1"}
    assert "optimizer.lr=1000000000000.0" in rows["0"] and "FAILED: epoch 1, step" in rows["0"]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == [
        "0_lr=1e+12", "1_lr=0.05"]  # named by what differs, not by the settings all jobs share
    assert (job(tmp_path / "sweep", 0) / "error.txt").read_text().startswith("epoch 1, step")
    # in the HParams tab: the failed job with its status; no job fixes the columns (no experiment
    # summary), so TensorBoard lists the hyperparameters that differ between the jobs first
    assert sessions(job(tmp_path / "sweep", 0)) == (1e12, api_pb2.STATUS_FAILURE)
    assert sessions(job(tmp_path / "sweep", 1)) == (0.05, api_pb2.STATUS_SUCCESS)
    assert not (job(tmp_path / "sweep", 0) / "metrics.json").exists()
    metrics = json.loads((job(tmp_path / "sweep", 1) / "metrics.json").read_text())  # the other job ran to the end
    assert metrics["steps"] == 2
    assert f"val {metrics['best_val_acc']:.4f}  test {metrics['test_acc']:.4f}" in rows["1"]
    assert "best validation accuracy: job 1" in proc.stdout


def test_joblib_runs_two_jobs_each_with_hparams(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "trainer.num_threads=1",
               "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # Hydra's joblib launcher ran them
    rows = table_rows(proc.stdout)
    for num, lr in ((0, 0.01), (1, 0.1)):
        run = job(tmp_path / "sweep", num)
        assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["optimizer"]["lr"] == lr
        metrics = json.loads((run / "metrics.json").read_text())
        hparams = hparams_of(run)  # the HParams tab compares the jobs on these
        assert hparams["result/test_acc"] == pytest.approx(metrics["test_acc"])
        assert hparams["result/best_val_acc"] == pytest.approx(metrics["best_val_acc"])
        assert f"optimizer.lr={lr}" in rows[str(num)]


def test_an_optuna_search_writes_its_best_trial(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", "hparams_search=lenet5_optuna", "hydra.sweeper.n_trials=3", *TINY,
               "model=mlp", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    result = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    trials = {n: json.loads((job(tmp_path / "sweep", n) / "metrics.json").read_text()) for n in range(3)}
    # the search maximised what cnn-train returns: the best validation accuracy
    assert result["best_value"] == pytest.approx(max(t["best_val_acc"] for t in trials.values()))
    assert set(result["best_params"]) == {"optimizer.lr", "trainer.batch_size", "optimizer.weight_decay"}
    assert 0.003 <= result["best_params"]["optimizer.lr"] <= 0.3
    assert len(table_rows(proc.stdout)) == 3
    lr = result["best_params"]["optimizer.lr"]
    names = [job(tmp_path / "sweep", n).name for n in range(3)]
    # run names say each trial's values, to 4 significant digits; the job's config keeps them whole
    assert any(f"lr={lr:.4g}_" in name for name in names), (lr, names)
    best_job = next(n for n in range(3) if f"lr={lr:.4g}_" in names[n])
    config = yaml.safe_load((job(tmp_path / "sweep", best_job) / ".hydra" / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == lr
    best = max(trials, key=lambda n: trials[n]["best_val_acc"])  # the table names the best trial's values
    assert f"best validation accuracy: job {best} ({trials[best]['best_val_acc']:.4f}): " in proc.stdout
    assert "optimizer.lr=" in proc.stdout.split("best validation accuracy: ")[1].splitlines()[0]


def test_submitit_local_runs_a_job(tmp_path: Path) -> None:
    cnn("cnn-train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY,
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert json.loads((job(tmp_path / "sweep", 0) / "metrics.json").read_text())["steps"] == 2
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))  # submitit ran it as a job


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None = None, error: str | None = None) -> None:
    """A job folder as cnn-train leaves it: its overrides, and metrics.json or error.txt."""
    (sweep / str(num) / ".hydra").mkdir(parents=True)
    (sweep / str(num) / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (sweep / str(num) / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (sweep / str(num) / "error.txt").write_text(error + "\n")


def _metrics(val: float | None, test: float, train: float, params: int, seconds: float) -> dict:
    return {"best_val_acc": val, "test_acc": test, "params": params,
            "history": [{"train_acc": 0.5, "epoch_seconds": seconds / 2},
                        {"train_acc": train, "epoch_seconds": seconds / 4, "val_seconds": seconds / 4}]}


def test_the_table_sorts_by_validation_accuracy_with_params_train_accuracy_and_time(tmp_path: Path, capsys) -> None:
    from cnn_cli.sweep import report

    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["model.norm=none", "trainer.epochs=1"], _metrics(0.95, 0.94, 0.96, 1_256_080, 40.4))
    _job(sweep, 1, ["model.norm=batchnorm", "trainer.epochs=1"], error="epoch 1, step 3: the loss is nan")
    _job(sweep, 2, ["model.norm=groupnorm", "trainer.epochs=1"], _metrics(0.99, 0.985, 0.97, 1_256_650, 61))
    _job(sweep, 3, ["model.norm=layernorm", "trainer.epochs=1"], _metrics(None, 0.9, 0.91, 1_307_470, 12))
    assert report(sweep) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "  every job: trainer.epochs=1"
    rows = [line.split() for line in lines[3:7]]
    assert [row[0] for row in rows] == ["2", "0", "3", "1"]  # best first, no validation next, failed last
    assert rows[0] == ["2", "model.norm=groupnorm", "1,256,650", "train", "0.9700", "val", "0.9900", "test", "0.9850",
                       "61", "s"]
    assert rows[2][5:7] == ["val", "none"] and rows[3][2:4] == ["FAILED:", "epoch"]
    assert lines[7] == "best validation accuracy: job 2 (0.9900): model.norm=groupnorm"


def test_compare_norms_runs_one_job_per_normalisation(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "-m", "experiment=compare_norms", *tiny("trainer.limit_train_batches=1"),
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    rows = table_rows(proc.stdout)
    norms = {row.split()[1] for row in rows.values()}
    assert norms == {f"model.norm={n}" for n in ("batchnorm", "groupnorm", "layernorm", "instancenorm", "none")}
    assert job(tmp_path / "sweep", 0).name == "0_norm=batchnorm"  # the experiment's sweeper params vary
    assert "0 failed" in proc.stdout


def test_job_folder_names_keep_what_varies_and_cannot_leave_the_sweep_folder(tmp_path: Path) -> None:
    from cnn_cli.sweep import job_folder

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": [
        "dataset.root=../../etc,/tmp/x y", "optimizer.lr=0.1,0.01", "trainer.epochs=1"]}}}))
    task = ["dataset.root=../../etc", "optimizer.lr=0.1", "trainer.epochs=1"]
    name = job_folder(3, task, str(tmp_path), None)
    assert name == "3_root=..-..-etc_lr=0.1" and "/" not in name
    assert job_folder(4, ["optimizer.lr=" + "9" * 200], str(tmp_path), None) == "4_lr=" + "9" * 77  # 80 at most
    assert job_folder(0, ["trainer.epochs=1"], str(tmp_path / "none"), {"model.norm": "a,b"}) == "0"
