"""The training loop reads its numbers off the device only now and then (cnn_cli/meter.py):
what it logs must be what a read at every step gives. In process, on the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnn_cli import train
from cnn_cli.errors import UserError
from helpers import compose

# 7 batches of 16 in optimizer steps of 2: steps of 32, 32, 32 and 16 samples, two epochs
STEPS = ["dataset=mnist_sample", "model=lenet5_bn", "trainer.device=cpu", "trainer.progress=false",
         "trainer.epochs=2", "trainer.batch_size=16", "trainer.limit_train_batches=7",
         "trainer.accumulate_grad_batches=2", "trainer.limit_val_batches=1", "trainer.log_graph=false",
         "trainer.log_images=false"]
TIMING = ("img_per_s", "epoch_seconds", "val_seconds")


def trained(run: Path, *overrides: str) -> tuple[dict, dict[int, float]]:
    """metrics.json and the TensorBoard curve loss/train_step (step -> value) of a run."""
    cfg = compose("train", *STEPS, *overrides)
    train.train(train.prepare(cfg, run, []))
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    return (json.loads((run / "metrics.json").read_text()),
            {e.step: e.value for e in events.Scalars("loss/train_step")})


def test_numbers_read_every_third_step_are_those_read_at_every_step(tmp_path: Path) -> None:
    every, dense = trained(tmp_path / "every", "trainer.log_every_n_steps=1")
    third, sparse = trained(tmp_path / "third", "trainer.log_every_n_steps=3")
    assert list(dense) == list(range(1, 9)) and list(sparse) == [1, 3, 6]
    assert sparse == {step: dense[step] for step in sparse}  # each logged step's own mean loss
    assert [{k: v for k, v in row.items() if k not in TIMING} for row in every["history"]] == \
        [{k: v for k, v in row.items() if k not in TIMING} for row in third["history"]]
    # the epoch's training loss is the mean over its samples of the per-step losses (32, 32, 32, 16 samples)
    sizes = [32, 32, 32, 16]
    for epoch, row in enumerate(every["history"]):
        losses = [dense[4 * epoch + i + 1] for i in range(4)]
        assert row["train_loss"] == pytest.approx(sum(x * n for x, n in zip(losses, sizes)) / sum(sizes), rel=1e-6)
        assert (row["train_acc"] * sum(sizes)) == pytest.approx(round(row["train_acc"] * sum(sizes)))  # a count


def test_a_diverging_loss_names_the_step_it_first_appeared_at_however_seldom_it_is_read(tmp_path: Path) -> None:
    said = []
    for every in (1, 5):
        run = tmp_path / str(every)
        with pytest.raises(UserError) as error:
            trained(run, "optimizer.lr=1e12", "trainer.epochs=1", f"trainer.log_every_n_steps={every}")
        said.append(str(error.value))
        assert not (run / "checkpoints" / "last.pt").exists()  # nothing of the diverged weights is kept
    assert said[0] == said[1]
    assert said[0].startswith("epoch 1, step 2: the loss is nan") and "optimizer.lr=1e+11" in said[0]


def test_a_stop_between_reads_keeps_the_sums_of_every_batch_trained(tmp_path: Path) -> None:
    """One process stops at any step, read or not: the running sums it saves are those of a read at every step."""
    kept = []
    for every in (1, 100):
        cfg = compose("train", *STEPS, f"trainer.log_every_n_steps={every}", "trainer.epochs=1")
        run = train.prepare(cfg, tmp_path / str(every), [])
        stop = train.StopRequest()

        def ask_to_stop() -> None:  # as Ctrl-C during step 2: the loop stops after step 3
            if run.progress.step == 2:
                stop.signum = 2

        assert train.train_one_epoch(run, train._NoWriter(), stop, ask_to_stop)
        kept.append((run.progress.step, run.progress.seen, run.progress.loss_sum, run.progress.correct))
    assert kept[0] == kept[1] and kept[0][:2] == (3, 96) and kept[0][2] > 0
