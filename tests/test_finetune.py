"""experiment=finetune on a folder of photos: pretrained weights, a new head, batch size and
epochs fitted to the data with the rule in the log; offline, ImageNet weights are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

import pytest
from cnn_cli import pretrained, train
from helpers import cnn, compose, one_error_line


def _photos(root: Path, per_class: int = 8) -> Path:
    """root/<class>/*.png: three classes of colour pictures of two sizes, each class its own tint."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cup", "pen", "key")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((36 + 4 * (i % 2), 40, 3)) * 80 + 30).astype(np.uint8)
            pixels[..., c] += 90
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_finetune_fits_batch_and_epochs_to_the_data_and_trains_a_new_head(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    cfg = compose("train", "experiment=finetune", f"dataset.root={_photos(tmp_path / 'pics')}",
                  f"model.pretrained={weights}", "dataset.input_shape=[3,32,32]", "trainer.device=cpu",
                  "trainer.progress=false")
    with caplog.at_level("INFO", logger="cnn_cli"):
        run = train.prepare(cfg, tmp_path / "run", [])
    assert "fit to the data: 20 training images: batch 32, 30 epochs (about 30 steps); the rule: batch 32 below " \
           "2,000 training images" in caplog.text
    assert "using batches of 20" in caplog.text  # then the whole set, said
    assert "fc1 fresh (fc1.weight (1000, 512) there vs (3, 512) here" in caplog.text
    assert run.record["trainer"]["epochs"] == 30 and run.record["dataset"]["mean"] == pretrained.IMAGENET_MEAN
    head = run.model.fc1.weight.clone()
    train.train_one_epoch(run, train._NoWriter(), train.StopRequest())  # label smoothing, warm-up, augmentation
    assert run.progress.seen == 20 and not torch.equal(head, run.model.fc1.weight)


@pytest.mark.e2e
def test_finetune_offline_is_one_line_saying_where_to_place_the_weights(tmp_path: Path) -> None:
    pics = _photos(tmp_path / "pics", per_class=3)
    proc = cnn("cnn-train", "experiment=finetune", f"dataset.root={pics}", "dataset.input_shape=[3,32,32]",
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False,
               env={"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9"})
    line = one_error_line(proc, after_log=True)
    assert line.startswith("error: model.pretrained=imagenet: cannot download "
                           "https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert line.endswith(f"place resnet18-f37072fd.pth in {tmp_path / 'torch/hub/checkpoints'}/ (or give "
                         "model.pretrained=PATH.pth)")
    assert not (tmp_path / "run" / "checkpoints").exists()
