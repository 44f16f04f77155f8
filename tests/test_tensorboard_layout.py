"""TensorBoard opens on the curves: it sorts its sections by the tag's first part and opens
the first ones, so accuracy and loss (train and val) come first, then the learning rate, and
the pictures after, written at the end (or every trainer.pictures_every_n_epochs). Read back
from the event files of real in-process runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnn_cli import tb, train
from helpers import compose

TINY = ["dataset=mnist_sample", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.batch_size=16", "trainer.progress=false", "trainer.device=cpu", "trainer.log_every_n_steps=1"]


def trained(run: Path, *overrides: str) -> EventAccumulator:
    cfg = compose("train", *TINY, *overrides)
    train.train(train.prepare(cfg, run, []))
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    events.Reload()
    return events


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> EventAccumulator:
    return trained(tmp_path_factory.mktemp("tb") / "run", "trainer.epochs=2", "trainer.log_histograms=true")


def test_the_first_sections_are_accuracy_and_loss_then_the_learning_rate(default_run: EventAccumulator) -> None:
    tags = default_run.Tags()
    every = [t for kind in ("scalars", "images", "histograms") for t in tags[kind]]
    sections = sorted({t.split("/")[0] for t in every})  # TensorBoard's order, Time Series and Scalars alike
    assert sections[:3] == ["accuracy", "loss", "lr"], sections
    assert {"accuracy/train", "accuracy/val"} <= set(tags["scalars"]) and \
        {"loss/train", "loss/val", "loss/train_step"} <= set(tags["scalars"])
    assert all(t.startswith("pictures/") for t in tags["images"]) and tags["images"]


def test_pictures_are_written_once_at_the_end_by_default(default_run: EventAccumulator) -> None:
    end = default_run.Scalars("loss/train_step")[-1].step
    for tag in default_run.Tags()["images"]:
        assert [e.step for e in default_run.Images(tag)] == [end], tag


def test_pictures_every_n_epochs_adds_them_during_the_run(tmp_path: Path) -> None:
    events = trained(tmp_path / "run", "trainer.epochs=3", "trainer.pictures_every_n_epochs=2")
    assert [e.step for e in events.Images("pictures/filters_first_conv")] == [4, 6]  # epoch 2, and the end
    assert [e.step for e in events.Images("pictures/features_conv1")] == [4, 6]
    assert [e.step for e in events.Images("pictures/misclassified")] == [6]  # the test set: at the end only


def test_misclassified_captions_keep_long_class_names_whole_and_the_grid_fits_a_card() -> None:
    samples = torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8)
    true = torch.zeros(8, dtype=torch.long)
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    short = tb.mistakes_grid(samples, true + 1, true, ["cat", "dog"], mean, std)[1]
    long = tb.mistakes_grid(samples, true + 1, true, ["cat", "a_golden_retriever_puppy_in_the_snow"], mean, std)[1]
    assert short.shape[2] == long.shape[2] == 4 * (96 + 2) + 2  # 4 tiles a row, each 96 pixels wide
    assert long.shape[1] > short.shape[1]  # the long name wraps onto more lines instead of being cut
    assert short.shape[2] / short.shape[1] > 1.2  # 8 mistakes in 2 rows: wider than tall, as TensorBoard's cards


def test_one_dimensional_feature_maps_are_drawn_large_enough_to_read() -> None:
    model = torch.nn.Sequential(torch.nn.Conv1d(6, 16, 5))
    (tag, picture), = tb.feature_maps(model, torch.randn(2, 6, 100))
    assert tag == "pictures/features_0"
    assert picture.shape[1] >= 256 and picture.shape[2] >= 2 * 480  # two samples side by side, ~256 x 512 each
