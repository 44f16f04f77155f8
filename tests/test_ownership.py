"""A run folder has one owner, writes never follow a planted symlink, secrets stay on this
machine, and Ctrl-C saves the run even when the pipe it prints to has closed.

Real cnn-train and cnn-eval processes on the bundled sample; the bad-input catalogue
(test_bad_input.py) holds the refusals that are one line and write nothing.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cnn_cli import checkpoint, rundir
from helpers import BIN, NO_GPU, ONE_THREAD, TINY, cnn, one_error_line, tiny, user_env, wait_for

pytestmark = pytest.mark.e2e

ENV = {**ONE_THREAD, **NO_GPU}
SECRET = "hunter2-do-not-share"
# a run still training when the test acts on it
LONG = ["dataset=mnist_sample", "trainer.epochs=200", "trainer.limit_train_batches=3", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory) -> Path:
    """A finished tiny run whose model name comes from an environment variable."""
    cwd = tmp_path_factory.mktemp("owned")
    cnn("cnn-train", *TINY, "model.name=${oc.env:CNN_TEST_SECRET}", "hydra.run.dir=run", cwd=cwd,
        env={**ENV, "CNN_TEST_SECRET": SECRET})
    return cwd / "run"


def test_a_second_trainer_in_a_live_run_folder_is_refused_and_a_killed_ones_folder_resumes(tmp_path: Path) -> None:
    first = subprocess.Popen([str(BIN / "cnn-train"), *LONG, "trainer.progress=false", "hydra.run.dir=run"],
                             cwd=tmp_path, env=user_env(ENV), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for((tmp_path / "run" / "checkpoints" / "last.pt").exists, first, "the first checkpoint")
        second = cnn("cnn-train", "resume=run", cwd=tmp_path, env=ENV, check=False)
        assert one_error_line(second) == (f"error: {tmp_path / 'run'} is in use by another cnn-train (process "
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
                            cwd=tmp_path, env=user_env(ENV), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen = b""
    while not re.search(rb"\| [1-9]\d*/\d+ \[", seen):  # the progress bar is drawing, a step done
        chunk = proc.stdout.read1(4096)
        assert chunk, seen.decode(errors="replace")
        seen += chunk
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
    done = cnn("cnn-eval", f"checkpoint={run_dir}", cwd=tmp_path, env=ENV)
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
    done = cnn("cnn-eval", f"checkpoint={secret_run / 'checkpoints' / 'best.pt'}", cwd=tmp_path,
               env={**ENV, "CNN_TEST_SECRET": "their-own-secret"})
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
    proc = cnn("cnn-train", *TINY, "hydra.run.dir=runs/run", cwd=tmp_path, env=ENV, check=False,
               preexec_fn=_capped(100))
    assert one_error_line(proc) == ("error: cannot write the run's record in runs/run: File too large; nothing of "
                                    "this attempt was kept. Free some space, then run again")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_under_tensorboards_writer_thread_is_one_line_naming_the_folder(tmp_path: Path) -> None:
    """The events are written by a thread of TensorBoard's: its failure must not print a thread
    traceback, and the one error names the folder and what was kept."""
    tiny_model = "model.layers=[{conv2d: {out_channels: 64, kernel_size: 5}},flatten,{linear: {out_features: 10}}]"
    proc = cnn("cnn-train", *tiny(tiny_model, "trainer.epochs=3"), "hydra.run.dir=run", cwd=tmp_path, env=ENV,
               check=False, preexec_fn=_capped(9000))
    line = one_error_line(proc)
    assert "Exception in thread" not in proc.stderr
    assert line.startswith(f"error: cannot write {tmp_path / 'run'}/"), line
    assert "File too large" in line and "try again" in line, line
