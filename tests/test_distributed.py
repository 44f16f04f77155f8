"""Data parallel training: torchrun starting cnn-train in 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import BIN, cnn, tiny, wait_for

pytestmark = pytest.mark.e2e  # every test here starts cnn-train or friends

# a global batch of 32 that two processes split 16 + 16; every step's loss logged
STEPS = tiny("trainer.batch_size=32", "trainer.limit_train_batches=4", "trainer.log_every_n_steps=1")


def torchrun(*args: str) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node=2", "--no-python", str(BIN / "cnn-train"), *args]


def step_losses(run: Path) -> list[float]:
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("loss/train_step")]


# accumulated: the batches before each step's last skip the all-reduce (no_sync), the last averages their sum
@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_processes_train_as_one_with_one_set_of_logs(accumulate: int, tmp_path: Path) -> None:
    steps = [*STEPS, f"trainer.accumulate_grad_batches={accumulate}"]
    cnn("cnn-train", *steps, f"hydra.run.dir={tmp_path / 'single'}", cwd=tmp_path)
    work = tmp_path / "ddp"
    work.mkdir()
    proc = subprocess.run(torchrun(*steps), cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = list(work.glob("outputs/*/*"))
    assert len(runs) == 1 and {p.name for p in work.iterdir()} == {"outputs"}  # rank 1 wrote nothing
    run = runs[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list((run / "tb").iterdir())) == 1 and len(list(run.glob("*.log"))) == 1
    assert json.loads((run / "metrics.json").read_text())["processes"] == 2
    # rank 1 compared its weights with rank 0's: equal after every all-reduced step
    assert "all 2 processes hold identical weights" in proc.stdout + proc.stderr
    # the same global batch of 32 split 16 + 16: the first step's loss is the single process's
    single, ddp = step_losses(tmp_path / "single"), step_losses(run)
    assert len(ddp) == len(single) == 4 // accumulate
    assert ddp[0] == pytest.approx(single[0], rel=1e-6)
    a = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)  # 4 batches later, equal but for rounding


def test_a_checkpoint_of_two_processes_resumes_in_one(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = tiny("trainer.batch_size=32", "trainer.limit_train_batches=null", "trainer.epochs=3", f"hydra.run.dir={run}")
    proc = subprocess.Popen(torchrun(*args), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for((run / "checkpoints" / "last.pt").exists, proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on; both processes stop at the same step
    proc.communicate(timeout=120)
    stopped = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert not stopped["finished"] and stopped["config"]["trainer"]["epochs"] == 3
    resumed = cnn("cnn-train", f"resume={run}", cwd=tmp_path)
    assert "resumed" in resumed.stdout + resumed.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 3 * (3500 // 32) and metrics["processes"] == 1
