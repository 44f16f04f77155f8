"""Transfer: init_from loads what matches and starts the rest fresh, trainer.freeze keeps
layers (and their batchnorm statistics) as they came, pretrained layers get their own rate,
and a run with parameter groups resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cnn_cli import checkpoint, train
from cnn_cli.errors import UserError
from helpers import compose

SMALL = ["dataset=random", "dataset.input_shape=[3,16,16]", "dataset.num_images=[48,8]", "dataset.val_size=8",
         "trainer.device=cpu", "trainer.batch_size=8", "trainer.progress=false", "model=resnet20"]


def _prepare(folder: Path, *overrides: str) -> train.Run:
    return train.prepare(compose("train", *SMALL, *overrides), folder, [])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A cnn-cli checkpoint of resnet20 for 10 classes, its weights not the fresh ones."""
    folder = tmp_path_factory.mktemp("source")
    run = _prepare(folder / "run", "seed=7")
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(1.0)
    path = folder / "source.pt"
    checkpoint.save(run.state_dict(), path)
    return path


def test_init_from_loads_what_matches_and_starts_the_head_fresh(source: Path, tmp_path: Path, caplog) -> None:
    with caplog.at_level("INFO", logger="cnn_cli"):
        run = _prepare(tmp_path / "run", f"init_from={source}", "dataset.num_classes=4")
    theirs, own = checkpoint.load(source)["model"], run.model.state_dict()
    assert torch.equal(own["res9.body.conv2.weight"], theirs["res9.body.conv2.weight"])
    assert torch.equal(own["bn1.running_var"], theirs["bn1.running_var"])
    assert own["fc1.weight"].shape == (4, 64) and not torch.equal(own["fc1.bias"], theirs["fc1.bias"][:4])
    assert f"init_from={source}: loaded" in caplog.text and ": conv1, bn1, res1, " in caplog.text
    assert f"init_from={source}: fc1 fresh (the head, for other classes than the source's)" in caplog.text


def test_a_head_for_other_classes_starts_fresh_even_where_its_shape_fits(source: Path, tmp_path: Path) -> None:
    same = _prepare(tmp_path / "same", f"init_from={source}")
    other = _prepare(tmp_path / "other", f"init_from={source}", "dataset.classes=[a,b,c,d,e,f,g,h,i,j]")
    theirs = checkpoint.load(source)["model"]["fc1.weight"]
    assert torch.equal(same.model.fc1.weight, theirs) and not torch.equal(other.model.fc1.weight, theirs)
    assert torch.equal(other.model.conv1.weight, same.model.conv1.weight)


def test_init_from_with_nothing_that_fits_is_an_error(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"init_from=.*: none of its weights fit this model"):
        _prepare(tmp_path / "run", f"init_from={source}", "model=mlp")


def test_a_layer_loads_whole_or_not_at_all(source: Path, tmp_path: Path) -> None:
    """mlp's last layer has resnet20's name and bias shape (fc1, 10) but not its weight's."""
    with pytest.raises(UserError, match=r"none of its weights fit this model"):
        _prepare(tmp_path / "run", f"init_from={source}", "model=mlp", "model.layers=[flatten,{linear: "
                 "{out_features: 10}}]")


def _one_step(run: train.Run) -> None:
    train.train_one_epoch(run, train._NoWriter(), train.StopRequest())


@pytest.mark.parametrize("spec", ["[conv1,bn1,res1]", "'up to res1'"])
def test_frozen_layers_get_no_gradient_and_keep_their_batchnorm_statistics(spec: str, tmp_path: Path) -> None:
    run = _prepare(tmp_path / "run", f"trainer.freeze={spec}", "trainer.limit_train_batches=1",
                   "optimizer.weight_decay=0.1")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    _one_step(run)
    after = run.model.state_dict()
    for key in ("conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked",
                "res1.body.bn2.running_var", "res1.body.conv2.weight"):
        assert torch.equal(before[key], after[key]), key
    for key in ("res2.body.conv1.weight", "res2.body.bn1.running_mean", "fc1.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert run.model.conv1.weight.grad is None
    assert not run.model.bn1.training and run.model.res2.body.bn1.training


@pytest.mark.slow  # a model prepared for each name: long for the fast tier
def test_freeze_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"trainer.freeze: 'res99' is not a layer of this model .see cnn-summary's "
                                        r"Name column.; did you mean res9\?"):
        _prepare(tmp_path / "run", "trainer.freeze=[conv1,res99]")
    with pytest.raises(UserError, match=r"trainer.freeze='up to NAME': 'fc9' is not a top-level layer"):
        _prepare(tmp_path / "run", "trainer.freeze='up to fc9'")
    with pytest.raises(UserError, match=r"trainer.freeze=3: give layer names, e.g. trainer.freeze=\[conv1,bn1,res1\]"):
        _prepare(tmp_path / "run", "trainer.freeze=3")


def test_freezing_every_layer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"freezes every layer: nothing would train; leave at least the head \(fc1\)"):
        _prepare(tmp_path / "run", "trainer.freeze='up to fc1'")


def test_pretrained_layers_learn_at_their_scaled_rate(source: Path, tmp_path: Path) -> None:
    run = _prepare(tmp_path / "run", f"init_from={source}", "dataset.num_classes=4", "trainer.pretrained_lr_scale=0.1",
                   "optimizer=adamw", "optimizer.lr=0.01", "scheduler=onecycle", "scheduler.max_lr=0.02")
    fresh, old = run.optimizer.param_groups
    assert [id(p) for p in fresh["params"]] == [id(run.model.fc1.weight), id(run.model.fc1.bias)]
    assert len(old["params"]) == len(list(run.model.parameters())) - 2
    assert old["max_lr"] == pytest.approx(0.1 * fresh["max_lr"])  # OneCycleLR's peak is scaled too
    assert old["lr"] == pytest.approx(0.1 * fresh["lr"])


@pytest.mark.slow  # three training runs: long for the fast tier
def test_a_run_with_parameter_groups_and_frozen_layers_resumes_exactly(source: Path, tmp_path: Path) -> None:
    setting = [f"init_from={source}", "dataset.num_classes=4", "trainer.pretrained_lr_scale=0.1", "trainer.epochs=2",
               "trainer.freeze=[conv1,bn1]", "trainer.limit_train_batches=3", "scheduler.warmup_epochs=1"]
    full = _prepare(tmp_path / "full", *setting)
    train.train(full)

    cut = _prepare(tmp_path / "cut", *setting)  # interrupted after its first epoch
    _one_step(cut)
    train.end_epoch(cut, train._NoWriter())
    resumed = train.prepare(compose("train", *SMALL, *setting, f"resume={tmp_path / 'cut'}"), tmp_path / "cut",
                            [f"resume={tmp_path / 'cut'}"])
    assert len(resumed.optimizer.param_groups) == 2 and resumed.frozen == ["conv1", "bn1"]
    train.train(resumed)
    a, b = (checkpoint.load(tmp_path / d / "checkpoints" / "last.pt") for d in ("full", "cut"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == [g["lr"] for g in b["optimizer"]["param_groups"]]
