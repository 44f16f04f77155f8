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

from cnn_cli import checkpoint, data as data_mod, outputs
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
