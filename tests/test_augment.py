"""Photo augmentation as whole-batch tensor operations: what each one does to a batch, that it
is a function of the seed, mixup/cutmix's soft labels, and the one-line refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cnn_cli import augment, data, train
from cnn_cli.errors import UserError
from helpers import compose

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def _settings(**values) -> OmegaConf:
    return OmegaConf.create({"crop_padding": 0, "flip": False, **values})


def _batch(n: int = 6, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images whose pixels in [0.1, 0.9] rise from left to right, and labels 0, 1, ..."""
    ramp = torch.linspace(0.1, 0.9, size).expand(n, 3, size, size)
    return data.normalize(ramp, MEAN, STD), torch.arange(n) % 3


def _pixels(images: torch.Tensor) -> torch.Tensor:
    return images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


def test_a_crop_of_the_whole_image_changes_nothing_and_a_quarter_magnifies_it() -> None:
    images, labels = _batch()
    same, _ = augment.apply(images, labels, _settings(resized_crop_scale=[1, 1], resized_crop_ratio=[1, 1]), MEAN,
                            STD, 3, seed=0)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    quarter, _ = augment.apply(images, labels, _settings(resized_crop_scale=[0.25, 0.25], resized_crop_ratio=[1, 1]),
                               MEAN, STD, 3, seed=0)
    row = _pixels(quarter)[:, 0, 8]  # half the width, stretched over the whole width
    assert torch.allclose(row[:, -1] - row[:, 0], torch.tensor(0.4), atol=0.05)


def test_rotation_and_translation_move_the_picture() -> None:
    images, labels = _batch()
    turned, _ = augment.apply(images, labels, _settings(rotate=90), MEAN, STD, 3, seed=1)
    columns = _pixels(turned)[:, 0, 4:12, 8]  # a rotated left-to-right ramp runs along the columns too
    assert (columns.max(1).values - columns.min(1).values).max() > 0.1
    moved, _ = augment.apply(images, labels, _settings(translate=0.25), MEAN, STD, 3, seed=1)
    assert not torch.allclose(moved, images, atol=1e-3)


def test_brightness_scales_the_pixels_by_one_factor_per_image() -> None:
    images, labels = _batch()
    bright, _ = augment.apply(images, labels, _settings(brightness=0.1), MEAN, STD, 3, seed=2)
    ratio = _pixels(bright) / _pixels(images)
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)
    assert ((per_image[:, 0] >= 0.9 - 1e-4) & (per_image[:, 0] <= 1.1 + 1e-4)).all()
    assert per_image[:, 0].std() > 0


def test_saturation_zero_is_grey() -> None:
    images, labels = _batch()
    images = images + torch.randn_like(images) * 0.1
    grey, _ = augment.apply(images, labels, _settings(saturation=1.0), MEAN, STD, 3, seed=3)
    assert not torch.equal(grey, images)
    same_seed, _ = augment.apply(images, labels, _settings(saturation=1.0), MEAN, STD, 3, seed=3)
    assert torch.equal(grey, same_seed)  # a function of the seed: a resumed run augments alike


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mixed_images_get_soft_labels_in_the_same_shares(kind: str) -> None:
    images, labels = _batch(n=8)
    images = torch.randn_like(images)
    mixed, targets = augment.apply(images, labels, _settings(**{kind: 1.0}), MEAN, STD, 3, seed=4)
    assert targets.shape == (8, 3) and torch.allclose(targets.sum(1), torch.ones(8))
    own = targets[torch.arange(8), labels]
    assert (own >= 0.0).all() and (own <= 1.0).all()
    assert ((targets > 0).sum(1) <= 2).all()  # each image's own label and its partner's
    if kind == "mixup":  # a blend: every pixel moved
        assert (mixed != images).flatten(1).float().mean() > 0.5
    else:  # cutmix: one box pasted, the same share of every image's own pixels kept
        kept = (mixed == images).flatten(1).float().mean(1)
        assert torch.allclose(kept, kept[:1].expand_as(kept))


def test_training_with_mixup_and_cutmix_counts_accuracy_on_the_hard_labels(tmp_path: Path) -> None:
    cfg = compose(
        "train", "dataset=random", "dataset.input_shape=[3,16,16]", "dataset.num_images=[40,8]", "dataset.val_size=8",
        "trainer.device=cpu", "trainer.batch_size=8", "trainer.limit_train_batches=2", "model=resnet20",
        "dataset.augment.mixup=0.2", "dataset.augment.cutmix=1.0", "dataset.augment.resized_crop_scale=[0.35,1]",
        "dataset.augment.rotate=10", "dataset.augment.brightness=0.2", "dataset.augment.saturation=0.2")
    run = train.prepare(cfg, tmp_path / "run", [])
    train.train_one_epoch(run, train._NoWriter(), train.StopRequest())
    assert run.progress.seen == 16 and isinstance(run.progress.correct, int) and 0 <= run.progress.correct <= 16
    assert torch.isfinite(torch.tensor(run.progress.loss_sum))


def _dataset(*overrides: str):
    return compose("train", *overrides).dataset


@pytest.mark.parametrize("override, message", [
    ("dataset.augment.resized_crop_scale=[0,1]", "resized_crop_scale=[0.0, 1.0]: give [smallest, largest] fraction of "
                                                 "the image's area to crop, each in (0, 1]"),
    ("dataset.augment.resized_crop_scale=[0.5,1.5]", "each in (0, 1]"),
    ("dataset.augment.resized_crop_ratio=[2,1]", "resized_crop_ratio=[2.0, 1.0]: give [smallest, largest]"),
    ("dataset.augment.rotate=400", "dataset.augment.rotate=400.0 must be from 0 (off) to 180"),
    ("dataset.augment.mixup=-1", "dataset.augment.mixup=-1.0: the Beta"),
])
def test_bad_augmentation_values_are_refused(override: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        data.resolve(_dataset("dataset=random", override))


def test_photo_augmentation_is_refused_where_it_makes_no_sense() -> None:
    with pytest.raises(UserError, match=r"dataset.augment.saturation=0.2 needs colour images \(3 channels\), but "
                                        "these have 1"):
        data.resolve(_dataset("dataset=mnist_sample", "dataset.augment.saturation=0.2"))
    with pytest.raises(UserError, match=r"dataset.augment.rotate=10.0 is for images \(C x H x W\), but the samples "
                                        "are 6 x 100"):
        data.resolve(_dataset("dataset=random", "dataset.input_shape=[6,100]", "dataset.augment.rotate=10"))
    data.resolve(_dataset("dataset=random", "dataset.input_shape=[6,100]", "dataset.augment.mixup=0.2"))  # any rank
