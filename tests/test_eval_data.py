"""cnn-eval states its test set and never swaps it: a checkpoint whose dataset is not where
it looks is an error; the bundled sample only when asked, and said; the run's own recorded
accuracy beside the new one. In-process (the exit status and one line: test_bad_input.py)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from cnn_cli import sources
from cnn_cli.errors import UserError
from cnn_cli.evaluate import run_eval
from helpers import compose
from test_use_model import save_checkpoint


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory) -> Path:
    """A run folder of a full-MNIST LeNet-5 (its config records fallback=true, cnn-train's default)."""
    run = tmp_path_factory.mktemp("mnist_run")
    save_checkpoint(run / "checkpoints" / "best.pt", ["model=lenet5", "dataset=mnist", "dataset.root=author/data"])
    (run / "metrics.json").write_text(json.dumps({"test_acc": 0.9874, "best_val_acc": 0.99, "dataset": "mnist"}))
    return run


def test_a_checkpoint_whose_dataset_is_not_there_is_one_line_naming_it_the_folder_and_root(
        mnist_run: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = mnist_run / "checkpoints" / "best.pt"
    for root, said in ((None, "data/ (root= not given)"), (str(tmp_path / "nowhere"), f"root={tmp_path}/nowhere")):
        with pytest.raises(UserError) as err:
            run_eval(compose("eval", f"checkpoint={ckpt}", *([f"root={root}"] if root else [])))
        message = str(err.value)
        assert len(message.splitlines()) == 1
        assert message.startswith(f"the checkpoint's dataset 'mnist' is not in {said}: looked in ")
        looked = (Path(root) if root else tmp_path / "data") / "MNIST" / "raw"
        assert f"{looked} (train-images-idx3-ubyte, " in message
        assert "root=DIR" in message and "dataset.fallback=true" in message and "author" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, nothing downloaded


def test_the_bundled_sample_only_when_asked_and_said_first_and_in_the_json(
        mnist_run: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    shutil.copytree(mnist_run, run)
    with caplog.at_level(logging.INFO):
        report = run_eval(compose("eval", f"checkpoint={run}", "dataset.fallback=true"))
    assert report["test_set"] == {"name": sources.FALLBACK_NAME, "split": "test", "count": 1000,
                                  "read_from": "mnist_sample.npz (bundled with cnn-cli)", "fallback": True}
    assert report["recorded_accuracy"] == 0.9874
    saved = json.loads((run / "checkpoints" / "best.eval-test.json").read_text())
    assert saved["test_set"]["fallback"] is True and saved["dataset"] == sources.FALLBACK_NAME
    lines = [r.getMessage() for r in caplog.records if r.name == "cnn_cli.evaluate"]
    assert lines[1].startswith("evaluated on mnist_sample (fallback) test: 1000 images read from mnist_sample.npz")
    assert "NOT the test set of the checkpoint's dataset 'mnist'" in lines[1]  # lines[0]: which checkpoint
    assert f"accuracy {report['accuracy']:.4f}; the run recorded 0.9874 on its own mnist test set" in lines[2]
    assert all("trains" not in r.getMessage() for r in caplog.records)


def test_the_report_names_its_test_set_and_the_recorded_accuracy(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", ["model=lenet5", "dataset=mnist_sample"])
    metrics = tmp_path / "run" / "metrics.json"
    metrics.write_text(json.dumps({"test_acc": 0.25, "best_val_acc": 0.5}))
    report = run_eval(compose("eval", f"checkpoint={ckpt}"))
    assert report["test_set"] == {"name": "mnist_sample", "split": "test", "count": 1000,
                                  "read_from": "mnist_sample.npz (bundled with cnn-cli)", "fallback": False}
    assert report["recorded_accuracy"] == 0.25
    assert run_eval(compose("eval", f"checkpoint={ckpt}", "split=val"))["recorded_accuracy"] == 0.5
    # the run's record came with the checkpoint: anything but a number in [0, 1] is no record
    for hostile in ('[1, 2]', '{"test_acc": true}', '{"test_acc": "0.99"}', '{"test_acc": 7}', "{" * 100_000, ""):
        metrics.write_text(hostile)
        assert run_eval(compose("eval", f"checkpoint={ckpt}"))["recorded_accuracy"] is None, hostile
    # last.pt is not the checkpoint the run tested
    shutil.copy(ckpt, ckpt.with_name("last.pt"))
    metrics.write_text(json.dumps({"test_acc": 0.25}))
    assert run_eval(compose("eval", f"checkpoint={ckpt.with_name('last.pt')}"))["recorded_accuracy"] is None
