"""A run folder has one owner, writes never follow a planted symlink, secrets stay on this
machine, and Ctrl-C saves the run even when the pipe it prints to has closed.

Real cnn-train and cnn-eval processes on the bundled sample; the bad-input catalogue
(test_bad_input.py) holds the refusals that are one line and write nothing.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnn_cli import checkpoint, rundir

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
ENV = {**{k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CNN_CLI_FULL_ERROR")},
       "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
TINY = ["dataset=mnist_sample", "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.progress=false"]
SECRET = "hunter2-do-not-share"
LONG = ["dataset=mnist_sample", "trainer.epochs=200", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env or ENV, capture_output=True, text=True,
                          timeout=240)


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory) -> Path:
    """A finished tiny run whose model name comes from an environment variable."""
    cwd = tmp_path_factory.mktemp("owned")
    done = run("cnn-train", *TINY, "model.name=${oc.env:CNN_TEST_SECRET}", "hydra.run.dir=run", cwd=cwd,
               env={**ENV, "CNN_TEST_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    return cwd / "run"


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_a_second_trainer_in_a_live_run_folder_is_refused_and_a_killed_ones_folder_resumes(tmp_path: Path) -> None:
    first = subprocess.Popen([str(BIN / "cnn-train"), *LONG, "trainer.progress=false", "hydra.run.dir=run"],
                             cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(tmp_path / "run" / "checkpoints" / "last.pt", first)
        second = run("cnn-train", "resume=run", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip() == (f"error: {tmp_path / 'run'} is in use by another cnn-train (process "
                                         f"{first.pid}); wait for it to finish, or stop it, then resume")
        records = sorted(p.name for p in (tmp_path / "run" / ".hydra").iterdir())
        assert not any(name.startswith("resume-") for name in records), records  # it wrote nothing there
    finally:
        first.kill()
        first.wait()
    rundir.claim(tmp_path / "run")  # the lock died with its process: a resume can take the folder
    assert (tmp_path / "run" / rundir.LOCK_NAME).read_text().strip() == str(os.getpid())
    rundir.release(tmp_path / "run")
    assert not (tmp_path / "run" / rundir.LOCK_NAME).exists()


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path: Path) -> None:
    taken = tmp_path / "outputs" / "2026-01-01" / "10-00-00"
    taken.mkdir(parents=True)
    assert rundir._new_folder(taken) == taken.with_name("10-00-00-1")
    assert rundir._new_folder(taken) == taken.with_name("10-00-00-2")


def test_ctrl_c_saves_and_exits_130_when_the_pipe_reader_has_gone(tmp_path: Path) -> None:
    """`cnn-train ... 2>&1 | tee log` and Ctrl-C: the terminal's SIGINT ends tee as well."""
    proc = subprocess.Popen([str(BIN / "cnn-train"), *LONG, "trainer.progress=true", "hydra.run.dir=run"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    while b"training:" not in seen:
        chunk = proc.stdout.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
    time.sleep(1)  # the progress bar is drawing
    proc.stdout.close()  # the reader exits: every later write hits a closed pipe
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 128 + signal.SIGINT
    state = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert not state["finished"] and state["progress"]["step"] >= 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "cnn-train resume=" in log and "Logging error" not in log


def test_eval_replaces_a_planted_symlink_instead_of_writing_through_it(secret_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "shared_run"
    subprocess.run(["cp", "-r", str(secret_run), str(run_dir)], check=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    report = run_dir / "checkpoints" / "best.eval-test.json"
    report.symlink_to(victim)
    done = run("cnn-eval", f"checkpoint={run_dir}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"evaluating {run_dir / 'checkpoints' / 'best.pt'}" in done.stdout + done.stderr  # a folder: its best.pt
    assert victim.read_text() == "keep me\n"
    assert not report.is_symlink() and json.loads(report.read_text())["split"] == "test"


def test_values_from_the_environment_are_recorded_as_their_key_and_never_resolved(secret_run: Path,
                                                                                   tmp_path: Path) -> None:
    state = checkpoint.load(secret_run / "checkpoints" / "best.pt")
    assert state["config"]["model"]["name"] == "${oc.env:CNN_TEST_SECRET}"
    assert json.loads((secret_run / "metrics.json").read_text())["model"] == "${oc.env:CNN_TEST_SECRET}"
    for path in [*secret_run.rglob("*.pt"), *(secret_run / "tb").rglob("*"), secret_run / "metrics.json"]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    # evaluated elsewhere, by someone whose environment has a value under that name
    done = run("cnn-eval", f"checkpoint={secret_run / 'checkpoints' / 'best.pt'}", cwd=tmp_path,
               env={**ENV, "CNN_TEST_SECRET": "their-own-secret"})
    assert done.returncode == 0, done.stderr
    assert "their-own-secret" not in done.stdout + done.stderr
    assert "${oc.env:CNN_TEST_SECRET}" in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()  # nothing created, nothing downloaded on the checkpoint's behalf


def test_a_stored_config_is_data_even_when_planted(tmp_path: Path, secret_run: Path) -> None:
    """An interpolation written into a checkpoint by hand is text, not resolved on load."""
    state = checkpoint.load(secret_run / "checkpoints" / "best.pt")
    state["config"]["model"]["name"] = "${oc.env:HOME}"
    stored = checkpoint.stored_config(state["config"])
    assert stored.model.name == "${oc.env:HOME}"
    assert OmegaConf.to_container(stored, resolve=True)["model"]["name"] == "${oc.env:HOME}"


def _capped(limit: int):
    """A full disk, for this process only: a write past `limit` bytes fails with EFBIG."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return cap


def test_a_full_disk_at_the_start_leaves_no_half_written_run(tmp_path: Path) -> None:
    proc = subprocess.run([str(BIN / "cnn-train"), *TINY, "hydra.run.dir=runs/run"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=240, preexec_fn=_capped(100))
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        "error: cannot write the run's record in runs/run: File too large; nothing of this attempt was kept. Free "
        "some space, then run again"], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_tensorboards_writer_thread_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    """The events are written by a thread of TensorBoard's: its failure must not print a thread
    traceback, and the one error names the folder and what was kept."""
    tiny_model = "model.layers=[{conv2d: {out_channels: 64, kernel_size: 5}},flatten,{linear: {out_features: 10}}]"
    proc = subprocess.run([str(BIN / "cnn-train"), *TINY, tiny_model, "trainer.epochs=3", "hydra.run.dir=run"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=240,
                          preexec_fn=_capped(9000))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "Exception in thread" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot write {tmp_path / 'run'}/"), proc.stderr
    assert "File too large" in proc.stderr and "try again" in proc.stderr
