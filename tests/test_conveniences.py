"""Training conveniences, each a trainer key: a moving average of the weights (ema_decay),
early stopping, gradient accumulation; each kept exactly across a resume. In process, on
the bundled MNIST sample with a few small batches."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnn_cli import checkpoint, distributed, schema, stopping, train
from cnn_cli.errors import UserError
from cnn_cli.ema import WeightAverage
from cnn_cli.evaluate import run_eval
from cnn_cli.trained import load_trained
from helpers import compose

BASE = ["dataset=mnist_sample", "trainer.limit_val_batches=2", "trainer.eval_batch_size=128",
        "trainer.progress=false", "trainer.device=cpu", "dataset.augment.crop_padding=0"]
TIMING = ("img_per_s", "epoch_seconds", "val_seconds")


def trained(run: Path, *overrides: str) -> dict:
    train.train(train.prepare(compose("train", *BASE, *overrides), run, []))
    return json.loads((run / "metrics.json").read_text())


def weights(path: Path, entry: str = "model") -> dict[str, torch.Tensor]:
    return checkpoint.load(path)[entry]


@pytest.mark.slow  # two training runs: long for the fast tier
def test_accumulating_four_batches_of_8_is_one_batch_of_32(tmp_path: Path) -> None:
    """lenet5 has no batchnorm, so the mean loss over 4 x 8 samples has the gradient of one 32-batch."""
    common = ("model=lenet5", "trainer.epochs=2", "trainer.ema_decay=null")
    trained(tmp_path / "big", *common, "trainer.batch_size=32", "trainer.limit_train_batches=3")
    trained(tmp_path / "acc", *common, "trainer.batch_size=8", "trainer.limit_train_batches=12",
            "trainer.accumulate_grad_batches=4")
    trained(tmp_path / "small", *common, "trainer.batch_size=8", "trainer.limit_train_batches=12")
    big, acc, small = (weights(tmp_path / name / "checkpoints" / "last.pt") for name in ("big", "acc", "small"))
    for key in big:
        torch.testing.assert_close(acc[key], big[key], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(small[key], big[key], rtol=1e-3, atol=1e-4) for key in big)  # the test can fail
    assert checkpoint.load(tmp_path / "acc" / "checkpoints" / "last.pt")["progress"]["step"] == 6  # optimizer steps


def test_under_ddp_the_batches_before_a_steps_last_keep_their_gradients_and_the_last_all_reduces_once(
        tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
        reduced = []

        def average(state, bucket):  # PyTorch's hook on each all-reduce: one process, so the mean is the sum
            reduced.append(bucket.index())
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        ddp.register_comm_hook(None, average)
        batch = torch.randn(4, 3)
        counts = []
        for forward, ends_step in ((ddp, False), (torch.compile(ddp), False), (ddp, True)):  # a step of 3 batches
            with distributed.syncing_gradients(forward, ends_step):
                ddp(batch).sum().backward()
            counts.append(len(reduced))
        assert counts == [0, 0, 1]
        one = torch.autograd.grad(ddp.module(batch).sum(), ddp.module.weight)[0]
        torch.testing.assert_close(ddp.module.weight.grad, 3 * one)  # the three batches' sum, kept locally till then
    finally:
        dist.destroy_process_group()
    plain = torch.nn.Linear(3, 2)
    assert type(distributed.syncing_gradients(plain, False)) is type(contextlib.nullcontext())  # one process


class InterruptAfter(logging.Handler):
    """Ctrl-C, as a user presses it, once the log says `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.sent = text, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.sent and self.text in record.getMessage():
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow  # three training runs: long for the fast tier
def test_a_resumed_run_with_ema_accumulation_and_early_stopping_ends_exactly_as_an_uninterrupted_one(
        tmp_path: Path, caplog) -> None:
    # patience 2 with min_delta 10 (no loss falls by that much): stops after epoch 3 of 5;
    # 7 batches in steps of 2 leave a step of one batch at each epoch's end
    settings = ("model=lenet5_bn", "trainer.epochs=5", "trainer.batch_size=16", "trainer.limit_train_batches=7",
                "trainer.accumulate_grad_batches=2", "trainer.ema_decay=0.9", "trainer.early_stopping.patience=2",
                "trainer.early_stopping.monitor=val_loss", "trainer.early_stopping.min_delta=10")
    full = trained(tmp_path / "full", *settings)
    cut = tmp_path / "cut"
    interrupt = InterruptAfter("epoch 1/5 ")
    logging.getLogger("cnn_cli").addHandler(interrupt)
    try:
        with caplog.at_level(logging.INFO, logger="cnn_cli"), pytest.raises(SystemExit) as stopped:
            train.train(train.prepare(compose("train", *BASE, *settings), cut, []))
    finally:
        logging.getLogger("cnn_cli").removeHandler(interrupt)
    assert stopped.value.code == 128 + signal.SIGINT
    state = checkpoint.load(cut / "checkpoints" / "last.pt")
    assert state["progress"]["epoch"] == 1 and state["progress"]["batch"] % 2 == 0  # stopped at a step's end
    assert state["progress"]["batch"] > 0 and "ema" in state

    resumed = trained(cut, f"resume={cut}")
    assert full["epochs"] == resumed["epochs"] == 3 and "stopped after epoch 3 of 5" in full["stopped_early"]
    for entry in ("model", "ema"):
        a, b = (weights(run / "checkpoints" / "last.pt", entry) for run in (tmp_path / "full", cut))
        assert all(torch.equal(a[k], b[k]) for k in a), entry
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in full["history"]] == \
        [{k: v for k, v in row.items() if k not in TIMING} for row in resumed["history"]]
    assert (full["test_acc"], full["best_epoch"]) == (resumed["test_acc"], resumed["best_epoch"])


def test_the_average_follows_the_weights_with_a_warming_up_decay() -> None:
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    average = WeightAverage(model, decay=0.5)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        model.weight.data.fill_(value)
        average.update(model, step)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        assert average.model.weight.item() == pytest.approx(expected)
    assert not average.model.weight.requires_grad


def test_the_average_follows_batchnorm_statistics_and_copies_its_counter() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    average = WeightAverage(model, decay=0.5)
    before = average.model[1].running_mean.clone()
    model(torch.randn(4, 1, 3, 3) + 5)  # train mode: moves the running mean, counts a batch
    average.update(model, 1)
    decay = min(0.5, 2 / 11)
    assert torch.allclose(average.model[1].running_mean, decay * before + (1 - decay) * model[1].running_mean)
    assert average.model[1].num_batches_tracked.item() == model[1].num_batches_tracked.item() == 1


def test_with_ema_validation_best_pt_and_cnn_eval_use_the_averaged_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = trained(run, "model=lenet5_bn", "trainer.epochs=1", "trainer.batch_size=32",
                      "trainer.limit_train_batches=6", "trainer.ema_decay=0.9", "trainer.limit_val_batches=null")
    best = checkpoint.load(run / "checkpoints" / "best.pt")
    assert metrics["weights"] == "ema"
    assert any(not torch.equal(best["ema"][k], best["model"][k]) for k in best["model"])
    used = load_trained(run).model.state_dict()  # what cnn-eval, cnn-predict and cnn-export load
    assert all(torch.equal(used[k], best["ema"][k]) for k in used)
    report = run_eval(compose("eval", f"checkpoint={run}", "split=val", "device=cpu"))
    assert report["loss"] == pytest.approx(metrics["history"][0]["val_loss"], rel=1e-5)  # validation judged these
    assert report["accuracy"] == metrics["best_val_acc"]


@pytest.mark.parametrize("history, settings, expected", [
    ([0.9, 0.8, 0.85, 0.86], ("val_loss", 2, 0.0), "since epoch 2 (0.8000), 2 epochs"),
    ([0.9, 0.8, 0.85], ("val_loss", 2, 0.0), None),
    ([0.5, 0.6, 0.605, 0.609], ("val_acc", 2, 0.01), "since epoch 2 (0.6000), 2 epochs"),
    ([0.5, 0.6, 0.605, 0.62], ("val_acc", 2, 0.01), None),
    ([0.5], ("val_acc", None, 0.0), None),
])
def test_early_stopping_counts_epochs_without_an_improvement_larger_than_min_delta(history, settings, expected):
    monitor, patience, min_delta = settings
    rows = [{monitor: value} for value in history]
    reason = stopping.reason_to_stop(rows, SimpleNamespace(monitor=monitor, patience=patience, min_delta=min_delta), 9)
    assert (reason is None) if expected is None else (expected in reason and f"epoch {len(history)} of 9" in reason)


def test_best_pt_follows_the_monitored_value() -> None:
    history = [{"val_loss": 0.5, "val_acc": 0.8}]
    assert stopping.improved({"val_loss": 0.4, "val_acc": 0.7}, history, "val_loss")
    assert not stopping.improved({"val_loss": 0.4, "val_acc": 0.7}, history, "val_acc")
    assert stopping.improved({"val_loss": 0.6, "val_acc": 0.9}, history, "val_acc")
    assert stopping.improved({"val_loss": 9.0}, [], "val_loss")  # the first epoch is the best so far


@pytest.mark.parametrize("override, message", [
    ("trainer.ema_decay=1.5", "trainer.ema_decay=1.5 must be between 0 and 1"),
    ("trainer.ema_decay=0", "trainer.ema_decay=0.0 must be between 0 and 1"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be >= 1"),
    ("trainer.early_stopping.monitor=val_f1", "trainer.early_stopping.monitor=val_f1: choose val_loss or val_acc"),
    ("trainer.early_stopping.patience=0", "trainer.early_stopping.patience=0 must be >= 1 (or null: off)"),
    ("trainer.early_stopping.min_delta=-1", "trainer.early_stopping.min_delta=-1.0 must be >= 0"),
    ("+trainer.early_stopping.patients=3", "trainer.early_stopping.patients: no such key, nothing would read it; "
                                          "did you mean trainer.early_stopping.patience?"),
])
def test_bad_settings_are_one_clear_error(override: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        schema.check(compose("train", *BASE, override))
    assert str(err.value).startswith(message), str(err.value)


def test_early_stopping_without_a_validation_split_is_refused() -> None:
    with pytest.raises(UserError, match="dataset.val_size=0 holds none out"):
        schema.check(compose("train", *BASE, "trainer.early_stopping.patience=3", "dataset.val_size=0"))
