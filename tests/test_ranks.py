"""1-D, 2-D and 3-D samples: normalisation, augmentation, memory format, batchnorm folding,
TensorBoard pictures, and cnn-train / cnn-eval end to end on each rank."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from cnn_cli import checkpoint, data, tb
from cnn_cli.builder import build_model
from cnn_cli.errors import UserError
from cnn_cli.evaluate import run_eval
from cnn_cli.fuse import fuse_batchnorm
from helpers import compose, train_here



SHAPES = {1: (3, 20), 2: (3, 9, 8), 3: (2, 5, 6, 7)}


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_normalize_scales_uint8_pixels_and_takes_floats_as_they_are_for_every_rank(rank: int) -> None:
    c = SHAPES[rank][0]
    mean, std = [0.1 * (i + 1) for i in range(c)], [0.5 + i for i in range(c)]
    pixels = torch.randint(0, 256, (4, *SHAPES[rank]), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = data.normalize(pixels, mean, std)
    assert out.dtype == torch.float32 and out.shape == pixels.shape
    for ch in range(c):  # channel ch, every sample and position, with its own mean and std
        torch.testing.assert_close(out[:, ch], (pixels[:, ch].float() / 255 - mean[ch]) / std[ch])
    readings = torch.randn(4, *SHAPES[rank]) * 9  # sensor values: no /255
    out = data.normalize(readings, torch.tensor(mean), torch.tensor(std))
    torch.testing.assert_close(out[:, -1], (readings[:, -1] - mean[-1]) / std[-1])
    assert not torch.equal(out, readings)  # a new tensor; the data is never changed in place
    torch.testing.assert_close(data.normalize(readings, mean, std) * torch.tensor(std).view(1, -1, *[1] * rank)
                               + torch.tensor(mean).view(1, -1, *[1] * rank), readings)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_batchnorm_folds_into_conv_and_linear_of_every_rank(rank: int) -> None:
    layers = [{f"conv{rank}d": {"out_channels": 5, "kernel_size": 3, "bias": False}}, f"batchnorm{rank}d", "relu",
              {f"conv{rank}d": {"out_channels": 4, "kernel_size": 1, "groups": 1}}, f"batchnorm{rank}d", "flatten",
              {"linear": {"out_features": 6}}, "batchnorm1d", "relu", {"linear": {"out_features": 3}}]
    model = build_model(layers, SHAPES[rank]).model
    for _ in range(5):  # non-trivial running statistics and affine parameters
        model(torch.randn(16, *SHAPES[rank]) * 2 + 0.5)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    model.eval()
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())  # a copy
    x = torch.randn(32, *SHAPES[rank])
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused(x), atol=1e-5, rtol=1e-4)


def reference_crop(sample: torch.Tensor, offset: list[int], pad: int) -> torch.Tensor:
    """One sample, zero-padded on every spatial axis, cut at `offset` by plain slicing."""
    padded = torch.nn.functional.pad(sample, (pad,) * (2 * (sample.dim() - 1)))
    window = tuple(slice(o, o + size) for o, size in zip(offset, sample.shape[1:]))
    return padded[(slice(None), *window)]


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_random_crop_shifts_each_sample_by_its_own_offset_on_every_axis(rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)
    pad = 2
    samples = torch.randint(1, 256, (12, *SHAPES[rank]), dtype=torch.uint8, generator=gen)  # no zeros
    plan = data.epoch_plan(12, seed=0, epoch=0, crop_padding=pad, spatial_axes=rank)
    assert plan.offsets.shape == (12, rank) and 0 <= plan.offsets.min() and plan.offsets.max() <= 2 * pad
    plan.offsets[0] = pad  # centred: the sample itself
    plan.offsets[1] = 0  # the padding shows at the start of every axis
    out = data.random_crop(samples, plan.offsets, pad)
    assert out.dtype == torch.uint8 and out.shape == samples.shape
    for i in range(12):
        assert torch.equal(out[i], reference_crop(samples[i], plan.offsets[i].tolist(), pad))
    assert torch.equal(out[0], samples[0])
    assert (out[1][(slice(None), *[slice(0, pad)] + [slice(None)] * (rank - 1))] == 0).all()


@pytest.mark.parametrize("rank", [2, 3])
def test_flip_mirrors_the_last_axis_of_images_and_volumes(rank: int) -> None:
    samples = torch.randint(0, 256, (6, *SHAPES[rank]), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, False, True, False, False, True])
    out = data.flip_where(samples, mask)
    for i in range(6):
        assert torch.equal(out[i], samples[i].flip(-1) if mask[i] else samples[i])


def test_random_data_of_any_channel_count_needs_no_mean_or_std() -> None:
    cfg = compose("train", "dataset=random", "dataset.input_shape=[6,100]", "dataset.num_images=[40,10]",
                  "dataset.val_size=8")
    loaded = data.load(cfg.dataset)
    assert loaded.mean.tolist() == pytest.approx([0.5] * 6) and loaded.std.tolist() == pytest.approx([0.289] * 6)
    assert tuple(loaded.train.images.shape) == (32, 6, 100) and len(loaded.val) == 8
    batch, _ = next(data.eval_batches(loaded, loaded.test, 10))
    assert abs(batch.mean().item()) < 0.1 and abs(batch.std().item() - 1) < 0.1  # uniform pixels, normalised


def test_bundled_basic_motions_is_the_archive_split_normalised_by_its_training_statistics() -> None:
    cfg = compose("train", "dataset=basic_motions")
    loaded = data.load(cfg.dataset)
    assert loaded.name == "basic_motions" and (len(loaded.train), len(loaded.val), len(loaded.test)) == (40, 0, 40)
    for split in (loaded.train, loaded.test):
        assert split.images.dtype == torch.float32 and tuple(split.images.shape[1:]) == (6, 100)
        assert torch.bincount(split.labels).tolist() == [10, 10, 10, 10]  # balanced, 4 activities
        assert torch.isfinite(split.images).all()
    train = loaded.train.images.double()
    assert loaded.mean.tolist() == pytest.approx(train.mean(dim=(0, 2)).tolist(), abs=1e-4)
    assert loaded.std.tolist() == pytest.approx(train.std(dim=(0, 2), correction=0).tolist(), abs=1e-4)
    normalised = data.normalize(loaded.train.images, loaded.mean, loaded.std)  # float readings: no /255
    assert normalised.mean(dim=(0, 2)).abs().max() < 1e-3 and (normalised.std(dim=(0, 2)) - 1).abs().max() < 1e-3
    standing, running = (loaded.train.images[loaded.train.labels == c] for c in (0, 1))
    assert running.std() > 5 * standing.std()  # the classes are what they say: running moves the watch


@pytest.mark.parametrize("overrides, message", [
    (("dataset=basic_motions", "dataset.augment.flip=true"), "would reverse time"),
    (("dataset=mnist_sample", "dataset.mean=null"), "dataset.mean=null is only for dataset=random"),
    (("dataset=random", "dataset.input_shape=[3]"), "give one sample's shape with the channels first"),
    (("dataset=random", "dataset.input_shape=[0,10]"), "every size >= 1"),
    (("dataset=random", "dataset.input_shape=[2,10]", "dataset.std=[1,0]"), "every value must be > 0"),
    (("dataset=random", "dataset.input_shape=[2,10]", "dataset.mean=[0.5]"), "got 1 and 2"),
    (("dataset=random", "dataset.num_classes=1", "dataset.classes=[a]"), "num_classes=1 must be from 2 to 100,000"),
    (("dataset=random", "dataset.num_classes=1000000000"), "num_classes=1000000000 must be from 2 to 100,000"),
])
def test_dataset_configs_that_cannot_train_are_refused_before_any_data(overrides, message) -> None:
    with pytest.raises(UserError, match=message):
        data.resolve(compose("train", *overrides).dataset)


def test_random_data_names_its_classes_by_number_unless_given() -> None:
    """So a 1000-class network (AlexNet as published) is one override: dataset.num_classes=1000."""
    numbered = compose("train", "dataset=random", "dataset.num_classes=1000").dataset
    data.resolve(numbered)
    assert list(numbered.classes) == [str(i) for i in range(1000)]
    named = compose("train", "dataset=random", "dataset.num_classes=2", "dataset.classes=[cat,dog]").dataset
    data.resolve(named)
    assert list(named.classes) == ["cat", "dog"]


def test_a_picture_that_cannot_be_drawn_is_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    wrong = functools.partial(tb.mistakes_grid, samples, torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 0]),
                              ["only one class name"], torch.tensor([0.5]), torch.tensor([0.3]))
    right = functools.partial(tb.mistakes_grid, samples, torch.tensor([1, 1, 1, 1]), torch.tensor([0, 0, 0, 0]),
                              ["a", "b"], torch.tensor([0.5]), torch.tensor([0.3]))
    with SummaryWriter(str(tmp_path)) as writer, caplog.at_level(logging.WARNING):
        for step in range(3):
            tb.add_picture(writer, wrong, step)
        tb.add_picture(writer, right, 0)
    warnings = [r for r in caplog.records if "could not draw mistakes_grid" in r.getMessage()]
    assert len(warnings) == 1 and "IndexError" in warnings[0].getMessage()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["pictures/misclassified"]


@pytest.mark.parametrize("model, shape, pictures", [
    ("imu_cnn1d", "[1,256]", {"pictures/filters_first_conv1d_in_channels_x_taps", "pictures/misclassified_signals",
                              "pictures/features_conv1", "pictures/features_conv2", "pictures/features_conv3"}),
    ("voxel_cnn3d", "[1,16,16,16]", {"pictures/filters_first_conv3d_middle_depth_slice",
                                     "pictures/misclassified_middle_depth_slice", "pictures/features_conv1",
                                     "pictures/features_conv2"}),
])
@pytest.mark.slow  # a real training run in process
def test_conv1d_and_conv3d_train_with_the_default_trainer_then_evaluate_and_fold(
        model: str, shape: str, pictures: set[str], tmp_path: Path) -> None:
    run = train_here(tmp_path / "run", "dataset=random", f"dataset.input_shape={shape}", f"model={model}",
                     "trainer.epochs=1", "dataset.num_images=[300,100]", "dataset.val_size=44",
                     "trainer.progress=false")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["best_chosen_by"] == "val_acc" and 0 <= metrics["test_acc"] <= 1
    state = checkpoint.load(run / "checkpoints" / "best.pt")
    assert state["config"]["trainer"]["channels_last"]  # the default, whatever the rank
    events = EventAccumulator(str(run / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == pictures
    report = run_eval(compose("eval", f"checkpoint={run}/checkpoints/best.pt", "fuse_bn=true"))
    assert report == json.loads((run / "checkpoints" / "best.eval-test.json").read_text())  # what cnn-eval saves
    assert report["accuracy"] == metrics["test_acc"] and sum(map(sum, report["confusion_matrix"])) == 100
    assert report["fuse_bn"]["max_abs_logit_difference"] < 1e-4 and report["fuse_bn"]["same_predictions"]


@pytest.mark.slow  # a real training run in process
def test_val_size_zero_trains_on_every_training_sample_and_keeps_the_last_epoch(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="cnn_cli"):
        run = train_here(tmp_path / "run", "experiment=basic_motions", "trainer.epochs=3")
    assert "no validation split (dataset.val_size=0)" in caplog.text
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_val_acc"] is None and metrics["best_epoch"] == 3 and metrics["steps"] == 15  # 40 / 8 x 3
    assert "dataset.val_size=0" in metrics["best_chosen_by"]
    assert all("val_acc" not in row for row in metrics["history"])
    best, last = (checkpoint.load(run / "checkpoints" / name) for name in ("best.pt", "last.pt"))
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])  # best.pt is the last epoch
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert "accuracy/val" not in events.Tags()["scalars"] and "accuracy/train" in events.Tags()["scalars"]


def test_layers_that_build_but_could_not_train_are_refused_by_the_builder() -> None:
    # found by tests/test_property.py: instancenorm over one position per channel fails only in training
    with pytest.raises(UserError, match=r"model.layers\[1\] \(instancenorm3d\).*one per channel"):
        build_model([{"adaptiveavgpool3d": {"output_size": 1}}, "instancenorm3d"], (2, 4, 4, 4))
    # and a 3-D network's layernorm has a 4-D weight that channels_last_3d must leave alone
    model = build_model(["layernorm", {"conv3d": {"out_channels": 2, "kernel_size": 1}}], (2, 3, 3, 3)).model
    from cnn_cli import runtime
    runtime.to_memory_format(model, runtime.memory_format(True, 4))
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert model(torch.randn(2, 2, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d)).shape == (2, 2, 3, 3, 3)
