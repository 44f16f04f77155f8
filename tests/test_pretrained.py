"""torchvision's networks as YAML architectures: their state_dicts load through model.pretrained
and give torchvision's own logits; bad weights are refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from cnn_cli import pretrained, train
from cnn_cli.errors import UserError
from helpers import compose

CONFIGS = Path(__file__).parents[1] / "configs" / "model"
SHIPPED = sorted(p.stem for p in CONFIGS.glob("*.yaml") if OmegaConf.load(p).get("torchvision"))


def _prepare(tmp_path: Path, *overrides: str) -> train.Run:
    """A run on a few random images, prepared as cnn-train prepares it (nothing is written)."""
    cfg = compose("train", "dataset=random", "dataset.num_images=[8,4]", "dataset.val_size=2", "trainer.device=cpu",
                  "trainer.batch_size=4", *overrides)
    return train.prepare(cfg, tmp_path / "run", [])


def _torchvision_file(tmp_path: Path, arch: str, **kwargs) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    model = torchvision.models.get_model(arch, **kwargs).eval()
    with torch.no_grad():  # batchnorm statistics that are not the fresh 0 and 1, so that they must load
        for layer in model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_the_shipped_torchvision_models_are_these() -> None:
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v2"} <= set(SHIPPED)


@pytest.mark.parametrize("arch", SHIPPED)
def test_torchvision_weights_give_torchvision_logits_at_224_and_32(arch: str, tmp_path: Path) -> None:
    theirs, path = _torchvision_file(tmp_path, arch)
    run = _prepare(tmp_path, f"model={arch}", f"model.pretrained={path}", "dataset.num_classes=1000")
    ours = run.model.eval()
    theirs.to(memory_format=run.memory_format)  # as ours trains (NHWC): the same convolution algorithms
    for size in (224, 32):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
    assert run.record["dataset"]["mean"] == pretrained.IMAGENET_MEAN  # recorded with the run
    assert run.record["dataset"]["std"] == pretrained.IMAGENET_STD


def test_a_new_class_count_keeps_everything_but_the_head(tmp_path: Path, caplog) -> None:
    theirs, path = _torchvision_file(tmp_path, "resnet18")
    with caplog.at_level("INFO", logger="cnn_cli"):
        run = _prepare(tmp_path, "model=resnet18", f"model.pretrained={path}", "dataset.num_classes=5")
    own = run.model.state_dict()
    assert torch.equal(own["res8.body.conv2.weight"], theirs.state_dict()["layer4.1.conv2.weight"])
    assert own["fc1.weight"].shape == (5, 512)
    assert "loaded 120 of 122 tensors: conv1, bn1, res1," in caplog.text
    assert "fc1 fresh (fc1.weight (1000, 512) there vs (5, 512) here; fc1.bias (1000,) there vs (5,) here)" \
        in caplog.text
    loaded = sorted(k for k, _ in run.model.named_parameters() if not k.startswith("fc1"))
    assert sorted(run.progress.pretrained) == loaded


def test_a_file_of_another_architecture_is_refused_naming_its_keys(tmp_path: Path) -> None:
    _, path = _torchvision_file(tmp_path, "resnet34")
    with pytest.raises(UserError, match=r"model.pretrained=.*resnet34.pth: not a torchvision resnet18 state_dict "
                                        r"\(unknown keys layer1.2.conv1.weight"):
        _prepare(tmp_path, "model=resnet18", f"model.pretrained={path}")


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pth"
    bad.write_text("not weights")
    with pytest.raises(UserError, match="notes.pth: not a readable state_dict file"):
        _prepare(tmp_path, "model=resnet18", f"model.pretrained={bad}")
    with pytest.raises(UserError, match="missing.pth: no such file"):
        _prepare(tmp_path, "model=resnet18", f"model.pretrained={tmp_path / 'missing.pth'}")


def test_pretrained_needs_a_model_with_a_torchvision_counterpart(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="the model 'lenet5' has no torchvision counterpart"):
        _prepare(tmp_path, "model=lenet5", "+model.pretrained=imagenet", "dataset.input_shape=[1,28,28]")


def test_imagenet_offline_says_which_file_to_place_where(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: offline on any machine
    with pytest.raises(UserError) as err:
        _prepare(tmp_path, "model=resnet18", "model.pretrained=imagenet")
    assert str(err.value).startswith("model.pretrained=imagenet: cannot download "
                                     "https://download.pytorch.org/models/resnet18-f37072fd.pth (")
    assert str(err.value).endswith(f"offline, place resnet18-f37072fd.pth in {tmp_path / 'torch/hub/checkpoints'}/ "
                                   "(or give model.pretrained=PATH.pth)")
    assert "\n" not in str(err.value)


def test_a_placed_imagenet_file_must_be_the_published_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch/hub/checkpoints"
    folder.mkdir(parents=True)
    _, path = _torchvision_file(tmp_path, "resnet18")
    path.rename(folder / "resnet18-f37072fd.pth")
    with pytest.raises(UserError, match="is not the published file .its SHA-256 does not start with f37072fd"):
        _prepare(tmp_path, "model=resnet18", "model.pretrained=imagenet")
