"""Hostile and clumsy input, third pass (issue 21), in this process: outputs never land on a
run, planted folder links are refused, work is bounded before it starts, and what used to
end in a traceback or a wrong result is one line with the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image

from cnn_cli import checkpoint, data as data_mod, imagefolder, outputs
from cnn_cli.builder import build_from_config
from cnn_cli.cli import register
from cnn_cli.errors import UserError
from cnn_cli.export import run_export
from cnn_cli.predict import run_predict

register()


def composed(config: str, overrides: list[str]):
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        return compose(config, overrides=overrides)


def save_run(run: Path, overrides: tuple[str, ...] = ("model=lenet5", "dataset=mnist_sample"),
             edit=None) -> Path:
    """A run folder as cnn-train leaves it (an untrained model): checkpoints/best.pt and last.pt,
    .hydra/config.yaml, tb/ and train.log; `edit(state)` changes the checkpoint first."""
    cfg = composed("train", list(overrides))
    data_mod.resolve(cfg.dataset)
    torch.manual_seed(0)
    state = {**{key: {} for key in checkpoint.FORMAT}, "finished": True, "model": build_from_config(cfg).model
             .state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}
    if edit is not None:
        edit(state)
    for name in ("best.pt", "last.pt"):
        checkpoint.save(state, run / "checkpoints" / name)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "tb").mkdir()
    (run / "train.log").write_text("")
    return run / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("hostile") / "run").parent.parent


def fingerprint(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 2: an output never destroys a run

@pytest.mark.parametrize("where", ["checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/preds.csv",
                                   "tb/preds.csv", ".hydra/config.yaml", ".hydra/deeper/new/preds.csv"])
def test_predict_output_inside_a_run_or_on_a_checkpoint_is_refused(run: Path, tmp_path: Path, where: str) -> None:
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    before = fingerprint(run)
    cfg = OmegaConf.create({"checkpoint": str(run), "inputs": [str(tmp_path / "digit.png")], "top_k": 1,
                            "batch_size": None, "device": "cpu", "output": str(run / where)})
    refused = r"^output=.*(is a checkpoint|inside the run folder's (checkpoints|tb|\.hydra)/)"
    with pytest.raises(UserError, match=refused):
        run_predict(cfg)
    assert fingerprint(run) == before and not (run / ".hydra" / "deeper").exists()


@pytest.mark.parametrize("where", ["checkpoints/last.pt", "checkpoints/best.onnx", "tb/model.onnx"])
def test_export_output_inside_a_run_is_refused(run: Path, where: str) -> None:
    before = fingerprint(run)
    cfg = OmegaConf.create({"checkpoint": str(run), "format": "onnx", "output": str(run / where), "fuse_bn": True,
                            "preprocess": True, "opset": None, "root": None})
    with pytest.raises(UserError, match=r"^output="):
        run_export(cfg)
    assert fingerprint(run) == before


def test_a_checkpoint_anywhere_and_a_link_into_a_run_are_refused(run: Path, tmp_path: Path) -> None:
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "mine.pt")
    with pytest.raises(UserError, match=r"output=.*mine.pt is a checkpoint"):
        outputs.output_file(str(tmp_path / "mine.pt"))
    (tmp_path / "link").symlink_to(run / "checkpoints")
    with pytest.raises(UserError, match=r"inside the run folder's checkpoints/.*e.g. output="):
        outputs.output_file(str(tmp_path / "link" / "preds.csv"))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_outputs_beside_a_run_or_in_a_folder_merely_named_checkpoints_are_fine(run: Path, tmp_path: Path) -> None:
    assert outputs.output_file(str(run / "preds.csv")) == run / "preds.csv"
    assert outputs.output_file(str(run / "checkpoints" / ".." / "p.csv")).name == "p.csv"
    (tmp_path / "mine" / "checkpoints").mkdir(parents=True)  # no run around it
    assert outputs.output_file(str(tmp_path / "mine" / "checkpoints" / "p.csv")).name == "p.csv"
    scripted = tmp_path / "model.torchscript.pt"  # an earlier export is written over by the next
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert outputs.output_file(str(scripted)) == scripted


# ------------------------------------------------------------------ 6: no wrong result with exit 0

def _poison(value: float):
    def edit(state: dict) -> None:
        state["model"]["fc2.bias"].fill_(value)
    return edit


@pytest.mark.parametrize("fmt,value", [("onnx", float("nan")), ("exported", float("inf"))])
def test_an_export_of_a_model_with_non_finite_outputs_fails_verification(tmp_path: Path, fmt: str,
                                                                         value: float) -> None:
    best = save_run(tmp_path / "run", edit=_poison(value))
    cfg = OmegaConf.create({"checkpoint": str(best), "format": fmt, "output": str(tmp_path / "model.out"),
                            "fuse_bn": True, "preprocess": True, "opset": None, "root": None})
    with pytest.raises(UserError, match=r"non-finite logits \(NaN or inf\).*nothing was kept"):
        run_export(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def _predict_cfg(ckpt: Path, tmp_path: Path, **changes) -> OmegaConf:
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    return OmegaConf.create({"checkpoint": str(ckpt), "inputs": [str(tmp_path / "digit.png")], "top_k": 1,
                             "batch_size": None, "device": "cpu", "output": None, **changes})


@pytest.mark.parametrize("batch_size", [0, -3])
def test_predict_batch_size_zero_is_refused_not_replaced(run: Path, tmp_path: Path, batch_size: int) -> None:
    with pytest.raises(UserError, match=rf"batch_size={batch_size} must be >= 1"):
        run_predict(_predict_cfg(run, tmp_path, batch_size=batch_size))


@pytest.mark.parametrize("key,value,says", [("std", [0.0], "every value must be > 0"),
                                            ("std", [-0.3], "every value must be > 0"),
                                            ("mean", [0.1, 0.2], "one value per channel"),
                                            ("num_classes", 7, "dataset.classes names 10 classes")])
def test_a_shared_checkpoint_is_checked_as_training_checks_its_config(tmp_path: Path, capsys, key: str, value,
                                                                      says: str) -> None:
    best = save_run(tmp_path / "run", edit=lambda state: state["config"]["dataset"].update({key: value}))
    with pytest.raises(UserError, match=rf"^checkpoint=.*best.pt: its stored config is not valid \(.*{says}"):
        run_predict(_predict_cfg(best, tmp_path))
    assert capsys.readouterr().out == ""  # not one prediction printed


def test_values_from_the_environment_convert_and_text_stays_hidden(monkeypatch) -> None:
    monkeypatch.setenv("EP", "3")
    monkeypatch.setenv("LR", "0.05")
    monkeypatch.setenv("SECRET", "hunter2")
    cfg = composed("train", ["dataset=mnist_sample", "trainer.epochs=${oc.env:EP}", "optimizer.lr=${oc.env:LR}",
                             "trainer.channels_last=${oc.env:FLAG,true}", "dataset.root=${oc.env:SECRET}/data"])
    record = checkpoint.recorded_config(cfg)
    assert record["trainer"]["epochs"] == 3 and record["optimizer"]["lr"] == 0.05
    assert record["trainer"]["channels_last"] is True
    assert record["dataset"]["root"] == "${oc.env:SECRET}/data" and "hunter2" not in str(record)
    assert cfg.trainer.epochs == 3  # the live config still resolves


@pytest.mark.parametrize("model", ["lenet5", "mlp", "resnet20"])
def test_a_norm_switch_on_a_model_without_one_is_refused(model: str) -> None:
    cfg = composed("train", [f"model={model}", "+model.norm=groupnorm", "dataset=mnist_sample"])
    with pytest.raises(UserError, match=rf"model.norm=groupnorm: the model '{model}' has no norm switch"):
        build_from_config(cfg)


def test_skip_bad_false_holds_when_the_cache_was_decoded_with_skip_bad_true(tmp_path: Path) -> None:
    for name in ("ant", "bee"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), i * 60).save(tmp_path / "pics" / name / f"{i}.png")
    (tmp_path / "pics" / "bee" / "half.png").write_bytes((tmp_path / "pics" / "bee" / "0.png").read_bytes()[:30])
    settings = ["dataset=imagefolder", f"dataset.root={tmp_path / 'pics'}", "dataset.workers=1"]
    data_mod.resolve(composed("train", settings).dataset)  # skip_bad=true: the cache records half.png as bad
    for reopened in (False, True):  # in this process, and as a later process maps it
        if reopened:
            imagefolder._OPENED.clear()
        with pytest.raises(UserError, match=r"bee/half.png is not a readable image .*dataset.skip_bad=true"):
            data_mod.resolve(composed("train", [*settings, "dataset.skip_bad=false"]).dataset)
