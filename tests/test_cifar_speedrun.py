"""experiment=cifar10_speedrun and flip test-time augmentation (trainer.tta), in process on a
tiny folder of colour images the test writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cnn_cli import checkpoint, data as data_mod, train, tta
from cnn_cli.errors import UserError
from cnn_cli.evaluate import evaluate, run_eval
from cnn_cli.trained import load_trained
from helpers import compose
from test_use_model import save_checkpoint

CLASSES = ("cat", "dog", "ship")


def _cifar_like(root: Path, train_per_class: int = 8, test_per_class: int = 4) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png: 32 x 32 colour pictures, each
    class its own tint with a brighter left half, so a mirror image is a different picture."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((32, 32, 3)) * 80 + 30).astype(np.uint8)
                pixels[..., c] += 90
                pixels[:, :16] += 40
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def composed(*overrides: str):
    return compose("train", "trainer.device=cpu", "trainer.progress=false", *overrides)


def test_the_cifar10_speedrun_experiment_trains_on_a_folder_of_images(tmp_path: Path) -> None:
    cfg = composed("experiment=cifar10_speedrun", f"dataset.root={_cifar_like(tmp_path / 'pics')}",
                   "trainer.batch_size=8", "trainer.epochs=1")
    assert (cfg.name, cfg.dataset.source, cfg.dataset.val_size, cfg.trainer.tta) == ("cifar10_speedrun",
                                                                                      "imagefolder", 0, "flip")
    assert cfg.dataset.augment.flip and not (cfg.trainer.log_graph or cfg.trainer.log_images or cfg.trainer.checkpoints)
    run = train.prepare(cfg, tmp_path / "run", [])
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    train.train(run)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["steps"], metrics["model"], metrics["dataset"]) == (3, "cifar10_speedrun", "imagefolder")
    assert 0 <= metrics["test_acc"] <= 1 and np.isfinite(metrics["test_loss"])
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def _split(n: int = 64) -> data_mod.Data:
    gen = torch.Generator().manual_seed(0)
    split = data_mod.Split(torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=gen),
                           torch.randint(0, 3, (n,), generator=gen))
    return data_mod.Data(split, split, split, "random", torch.full((3,), 0.5), torch.full((3,), 0.25))


@pytest.mark.parametrize("training", [True, False])
def test_flip_tta_scores_the_mean_of_the_logits_of_each_image_and_its_mirror(training: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).train(training)
    data = _split()
    images = data_mod.normalize(data.test.images, data.mean, data.std)
    with torch.no_grad():
        logits = (model(images) + model(images.flip(-1))) / 2
    plain = evaluate(model, data, data.test, 10, tta=None)
    flipped = evaluate(model, data, data.test, 10, tta="flip")
    assert torch.equal(flipped.predictions, logits.argmax(1))
    assert flipped.loss == pytest.approx(F.cross_entropy(logits, data.test.labels).item(), rel=1e-6)
    assert not torch.equal(flipped.predictions, plain.predictions)  # the test can fail: mirroring changes scores
    assert model.training is training  # evaluated in eval mode, then left as it was
    assert tta.wrap(model, None) is model


def test_a_run_with_flip_tta_validates_and_tests_so_and_cnn_eval_scores_it_the_same(tmp_path: Path) -> None:
    root = _cifar_like(tmp_path / "pics")
    cfg = composed("experiment=cifar10_speedrun", f"dataset.root={root}", "trainer.batch_size=8", "trainer.epochs=1",
                   "trainer.checkpoints=true", "dataset.val_size=3")
    train.train(train.prepare(cfg, tmp_path / "run", []))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    report = run_eval(compose("eval", f"checkpoint={tmp_path / 'run'}", f"root={root}", "device=cpu"))
    assert report["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert report["accuracy"] == report["recorded_accuracy"] == metrics["test_acc"]
    model = train.prepare(cfg, tmp_path / "again", []).model  # the same network, for its weights
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"])
    data = data_mod.load(cfg.dataset)
    plain = evaluate(model, data, data.test, 100, tta=None)
    assert plain.loss != pytest.approx(metrics["test_loss"], rel=1e-5)  # the test can fail: flip TTA is not plain


def test_cnn_eval_scores_a_checkpoint_from_before_trainer_tta_plainly_as_its_run_did(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", ["model=lenet5_bn", "dataset=mnist_sample"])
    state = torch.load(ckpt, weights_only=True)
    del state["config"]["trainer"]["tta"]  # as a checkpoint written before the key existed stores its config
    checkpoint.save(state, ckpt)
    report = run_eval(compose("eval", f"checkpoint={ckpt}", "device=cpu", "fuse_bn=true"))
    trained = load_trained(ckpt)
    data = data_mod.load(trained.config.dataset)
    plain = evaluate(trained.model, data, data.test, 256, tta=None)
    assert report["loss"] == pytest.approx(plain.loss, rel=1e-5) and report["accuracy"] == plain.accuracy
    assert report["fuse_bn"]["same_predictions"]
    flipped = evaluate(trained.model, data, data.test, 256, tta="flip")
    assert report["loss"] != pytest.approx(flipped.loss, rel=1e-5)  # the test can fail: flip TTA scores otherwise


@pytest.mark.parametrize("overrides, message", [
    (("dataset=mnist_sample", "trainer.tta=rotate"),
     "trainer.tta=rotate: choose flip (mean of each image and its mirror image), or null"),
    (("trainer.tta=flip", "experiment=basic_motions"), "trainer.tta=flip mirrors images left to right, but the "
                                                        "samples are 1-D signals (6 x 100: channels x steps)"),
])
def test_a_tta_that_does_not_fit_is_one_clear_error(overrides: tuple[str, ...], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:  # checked once the samples' rank is known, before any training
        train.prepare(composed(*overrides), tmp_path / "run", [])
    assert str(err.value).startswith(message), str(err.value)
