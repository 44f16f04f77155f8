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


# ------------------------------------------------------------------ 5: no traceback, no exit 1

def _pictures(root: Path, per_class: int, first: bytes | None = None) -> Path:
    """root/<ant|bee>/*.png, tiny greyscale; `first` replaces the first file's bytes (a bomb)."""
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 6), 40 * i + 20).save(root / name / f"{i}.png")
    if first is not None:
        (root / "ant" / "0.png").write_bytes(first)
    return root


@pytest.mark.parametrize("per_class", [1, 2])
def test_an_image_folder_too_small_for_a_test_split_is_refused_before_training(tmp_path: Path,
                                                                                per_class: int) -> None:
    from cnn_cli import train

    root = _pictures(tmp_path / "pics", per_class)
    cfg = composed("train", ["dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1", "model=mlp",
                             "trainer.device=cpu"])
    with pytest.raises(UserError, match=r"has no test samples.*dataset.test_size=0.1 holds out none.*test_size=2"):
        train.prepare(cfg, tmp_path / "run", [])
    assert not (tmp_path / "run").exists()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header says width x height: PIL's decompression-bomb check refuses it unread."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:33] = ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _jpeg_claiming(width: int, height: int) -> bytes:
    import io
    import struct

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("bomb", [_png_claiming(65500, 65500), _jpeg_claiming(65500, 65500)], ids=["png", "jpeg"])
def test_a_decompression_bomb_as_the_first_image_is_skipped_as_unreadable(tmp_path: Path, bomb: bytes,
                                                                           caplog) -> None:
    root = _pictures(tmp_path / "pics", 4, first=bomb)
    cfg = composed("train", ["dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1"])
    data_mod.resolve(cfg.dataset)
    assert list(cfg.dataset.input_shape) == [1, 6, 8]  # from the next image, not 65500 x 65500
    assert "skipped 1 unreadable image file(s): ant/0.png" in caplog.text
    cfg = composed("train", ["dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1",
                             "dataset.skip_bad=false"])
    with pytest.raises(UserError, match=r"ant/0.png is not a readable image \(.*(decompression bomb|exceeds limit)"):
        data_mod.resolve(cfg.dataset)


@pytest.mark.parametrize("override,says", [
    ("trainer.device=meta", r"trainer.device=meta is not a device to train on"),
    ("trainer.device=xla", r"trainer.device=xla is not a device to train on"),
    ("trainer.device=fpga:1", r"trainer.device=fpga:1 is not a device to train on"),
    ("seed=1180591620717411303424", r"seed=1180591620717411303424 must be a whole number from 0 to 4,294,967,295"),
    ("seed=-1", r"seed=-1 must be a whole number from 0"),
    ("dataset.split_seed=-1", r"dataset.split_seed=-1 must be a whole number from 0"),
    ("dataset.split_seed=4294967296", r"dataset.split_seed=4294967296 must be"),
])
def test_devices_and_seeds_out_of_range_are_refused_before_anything_runs(tmp_path: Path, override: str,
                                                                         says: str) -> None:
    from cnn_cli import train

    cfg = composed("train", ["dataset=mnist_sample", override])
    with pytest.raises(UserError, match=says):
        train.prepare(cfg, tmp_path / "run", [])


def test_an_image_folder_split_seed_is_checked_before_its_files_are_split(tmp_path: Path) -> None:
    root = _pictures(tmp_path / "pics", 4)
    cfg = composed("train", ["dataset=imagefolder", f"dataset.root={root}", "dataset.split_seed=-1"])
    with pytest.raises(UserError, match=r"dataset.split_seed=-1 must be a whole number"):
        data_mod.resolve(cfg.dataset)


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    """A run folder whose last.pt is a real, unfinished checkpoint of a prepared run (no step taken)."""
    from cnn_cli import train

    run = train.prepare(composed("train", ["dataset=mnist_sample", "trainer.device=cpu"]), tmp_path / "run", [])
    run.save("last.pt")
    return tmp_path / "run"


def _resume(run_dir: Path, edit) -> None:
    from cnn_cli import train

    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    edit(state)
    torch.save(state, last)
    train.prepare(composed("train", [f"resume={run_dir}"]), run_dir, [f"resume={run_dir}"])


@pytest.mark.parametrize("progress", [{"epoch": "one"}, {"epoch": -1}, {"batch": 1.5}, {"history": [1, 2]},
                                      {"surprise": 1}, {"best_acc": None}, {"epoch": True}])
def test_a_resume_with_a_damaged_progress_record_is_refused(saved_run: Path, progress: dict) -> None:
    with pytest.raises(UserError, match=r"^resume=.*: the checkpoint's 'progress' record is damaged"):
        _resume(saved_run, lambda state: state["progress"].update(progress))


def test_interrupting_with_ctrl_c_where_nothing_saves_is_one_line_and_exit_130(tmp_path: Path, capsys,
                                                                               monkeypatch) -> None:
    from cnn_cli import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("sys.argv", ["cnn-summary"])
    with pytest.raises(SystemExit) as stopped:
        cli.main(interrupted)
    assert stopped.value.code == 130
    assert capsys.readouterr().err == "interrupted; nothing was written\n"


# ------------------------------------------------------------------ 3: planted folder links in a run folder

@pytest.mark.parametrize("name", ["tb", ".hydra", "checkpoints", "metrics.json", "train.log"])
def test_a_planted_link_in_a_run_folder_is_refused_before_anything_is_written(tmp_path: Path, name: str) -> None:
    from cnn_cli import rundir

    run = tmp_path / "run"
    save_run(run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = run / name
    if target.exists():
        shutil.move(target, elsewhere / name)
    target.symlink_to(elsewhere / name)
    with pytest.raises(UserError, match=rf"run/{name} is a symbolic link; the run would write wherever it points"):
        rundir.claim(run)
    assert not (run / rundir.LOCK_NAME).exists() and not any(elsewhere.rglob(rundir.LOCK_NAME))
    target.unlink()  # the folder was let go: once the link is gone, it can be claimed
    rundir.claim(run)
    rundir.release(run)
