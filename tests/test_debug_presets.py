"""debug=fast, debug=overfit and debug=profile (configs/debug/), as lightning-hydra-template's."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cnn_cli import schema, train
from cnn_cli.errors import UserError
from helpers import cnn, compose

CPU = ["dataset=mnist_sample", "trainer.device=cpu"]


def trained(run: Path, *overrides: str) -> dict:
    train.train(train.prepare(compose("train", *CPU, *overrides), run, []))
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.e2e
def test_debug_fast_runs_one_batch_of_each_and_keeps_nothing(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mine.txt").write_text("a user's file")
    proc = cnn("cnn-train", "debug=fast", "dataset=mnist_sample", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "training: 1 epochs of 1 steps" in output and "256 test samples" in output  # one test batch
    assert "trainer.keep_run_folder=false: removed" in output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["outputs", "outputs/mine.txt"]


@pytest.mark.slow  # trains until it memorises: long for the fast tier
def test_debug_overfit_memorises_a_few_batches_and_says_passed(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cnn_cli"):
        metrics = trained(tmp_path / "run", "debug=overfit")
    assert metrics["overfit_check"] == "passed" and metrics["epochs"] < 300  # stopped once the loss was near zero
    assert metrics["history"][-1]["train_loss"] < 0.01 and metrics["steps"] == 3 * metrics["epochs"]
    assert "overfit check PASSED: the training loss on the same 3 batches fell from" in caplog.text


def test_debug_overfit_says_failed_when_the_network_cannot_learn(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cnn_cli"):
        metrics = trained(tmp_path / "run", "debug=overfit", "optimizer.lr=1e-9", "trainer.epochs=2")
    assert metrics["overfit_check"] == "failed"
    assert "overfit check FAILED" in caplog.text and "has a bug" in caplog.text


def test_debug_profile_writes_a_trace_perfetto_and_tensorboard_open(tmp_path: Path) -> None:
    trained(tmp_path / "run", "debug=profile", "trainer.batch_size=16")
    traces = list((tmp_path / "run" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1
    events = json.loads(traces[0].read_text())["traceEvents"]  # Chrome trace format
    assert sum(e.get("name", "").startswith("ProfilerStep#") for e in events) == 5


@pytest.mark.parametrize("key", ["overfit_batches", "profile_steps", "limit_test_batches"])
def test_debug_counts_below_one_are_refused(key: str) -> None:
    with pytest.raises(UserError, match=rf"trainer.{key}=0 must be >= 1 \(or null\)"):
        schema.check(compose("train", *CPU, f"trainer.{key}=0"))
