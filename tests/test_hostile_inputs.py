"""Hostile and clumsy input, third pass (issue 21), in this process: outputs never land on a
run, planted folder links are refused, work is bounded before it starts, and what used to
end in a traceback or a wrong result is one line with the fix."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnn_cli import checkpoint, data as data_mod, files, imagefolder, schema
from cnn_cli.builder import build_from_config
from cnn_cli.errors import UserError
from cnn_cli.export import run_export
from cnn_cli.predict import run_predict
from helpers import compose
from test_use_model import export_cfg


def save_run(run: Path, overrides: tuple[str, ...] = ("model=lenet5", "dataset=mnist_sample"),
             edit=None) -> Path:
    """A run folder as cnn-train leaves it (an untrained model): checkpoints/best.pt and last.pt,
    .hydra/config.yaml, tb/ and train.log; `edit(state)` changes the checkpoint first."""
    cfg = compose("train", *overrides)
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
    cfg = export_cfg(run, "onnx", output=str(run / where))
    with pytest.raises(UserError, match=r"^output="):
        run_export(cfg)
    assert fingerprint(run) == before


def test_a_checkpoint_anywhere_and_a_link_into_a_run_are_refused(run: Path, tmp_path: Path) -> None:
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "mine.pt")
    with pytest.raises(UserError, match=r"output=.*mine.pt is a checkpoint"):
        files.output_file(str(tmp_path / "mine.pt"))
    (tmp_path / "link").symlink_to(run / "checkpoints")
    with pytest.raises(UserError, match=r"inside the run folder's checkpoints/.*e.g. output="):
        files.output_file(str(tmp_path / "link" / "preds.csv"))


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_outputs_beside_a_run_or_in_a_folder_merely_named_checkpoints_are_fine(run: Path, tmp_path: Path) -> None:
    assert files.output_file(str(run / "preds.csv")) == run / "preds.csv"
    assert files.output_file(str(run / "checkpoints" / ".." / "p.csv")).name == "p.csv"
    (tmp_path / "mine" / "checkpoints").mkdir(parents=True)  # no run around it
    assert files.output_file(str(tmp_path / "mine" / "checkpoints" / "p.csv")).name == "p.csv"
    scripted = tmp_path / "model.torchscript.pt"  # an earlier export is written over by the next
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
    assert files.output_file(str(scripted)) == scripted


# ------------------------------------------------------------------ 6: no wrong result with exit 0

def _poison(value: float):
    def edit(state: dict) -> None:
        state["model"]["fc2.bias"].fill_(value)
    return edit


@pytest.mark.parametrize("fmt,value", [("onnx", float("nan")), ("exported", float("inf"))])
def test_an_export_of_a_model_with_non_finite_outputs_fails_verification(tmp_path: Path, fmt: str,
                                                                         value: float) -> None:
    best = save_run(tmp_path / "run", edit=_poison(value))
    cfg = export_cfg(best, fmt, output=str(tmp_path / "model.out"))
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
    cfg = compose("train", "dataset=mnist_sample", "trainer.epochs=${oc.env:EP}", "optimizer.lr=${oc.env:LR}",
                  "trainer.channels_last=${oc.env:FLAG,true}", "dataset.root=${oc.env:SECRET}/data")
    record = checkpoint.recorded_config(cfg)
    assert record["trainer"]["epochs"] == 3 and record["optimizer"]["lr"] == 0.05
    assert record["trainer"]["channels_last"] is True
    assert record["dataset"]["root"] == "${oc.env:SECRET}/data" and "hunter2" not in str(record)
    assert cfg.trainer.epochs == 3  # the live config still resolves


@pytest.mark.parametrize("model", ["lenet5", "mlp", "resnet20"])
def test_a_norm_switch_on_a_model_without_one_is_refused(model: str) -> None:
    cfg = compose("train", f"model={model}", "+model.norm=groupnorm", "dataset=mnist_sample")
    with pytest.raises(UserError, match=rf"model.norm=groupnorm: the model '{model}' has no norm switch"):
        schema.check(cfg)  # cnn-train's config check (cnn-summary, cnn-eval: test_bad_input.py)


def test_skip_bad_false_holds_when_the_cache_was_decoded_with_skip_bad_true(tmp_path: Path) -> None:
    for name in ("ant", "bee"):
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (8, 8), i * 60).save(tmp_path / "pics" / name / f"{i}.png")
    (tmp_path / "pics" / "bee" / "half.png").write_bytes((tmp_path / "pics" / "bee" / "0.png").read_bytes()[:30])
    settings = ["dataset=imagefolder", f"dataset.root={tmp_path / 'pics'}", "dataset.workers=1"]
    data_mod.resolve(compose("train", *settings).dataset)  # skip_bad=true: the cache records half.png as bad
    for reopened in (False, True):  # in this process, and as a later process maps it
        if reopened:
            imagefolder._OPENED.clear()
        with pytest.raises(UserError, match=r"bee/half.png is not a readable image .*dataset.skip_bad=true"):
            data_mod.resolve(compose("train", *settings, "dataset.skip_bad=false").dataset)


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
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1", "model=mlp",
                  "trainer.device=cpu")
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
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1")
    data_mod.resolve(cfg.dataset)
    assert list(cfg.dataset.input_shape) == [1, 6, 8]  # from the next image, not 65500 x 65500
    assert "skipped 1 unreadable image file(s): ant/0.png" in caplog.text
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1", "dataset.skip_bad=false")
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

    cfg = compose("train", "dataset=mnist_sample", override)
    with pytest.raises(UserError, match=says):
        train.prepare(cfg, tmp_path / "run", [])


def test_an_image_folder_split_seed_is_checked_before_its_files_are_split(tmp_path: Path) -> None:
    root = _pictures(tmp_path / "pics", 4)
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.split_seed=-1")
    with pytest.raises(UserError, match=r"dataset.split_seed=-1 must be a whole number"):
        data_mod.resolve(cfg.dataset)


@pytest.fixture
def saved_run(tmp_path: Path) -> Path:
    """A run folder whose last.pt is a real, unfinished checkpoint of a prepared run (no step taken)."""
    from cnn_cli import train

    run = train.prepare(compose("train", "dataset=mnist_sample", "trainer.device=cpu"), tmp_path / "run", [])
    run.save("last.pt")
    return tmp_path / "run"


def _resume(run_dir: Path, edit) -> None:
    from cnn_cli import train

    last = run_dir / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    edit(state)
    torch.save(state, last)
    train.prepare(compose("train", f"resume={run_dir}"), run_dir, [f"resume={run_dir}"])


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

    from hydra._internal.hydra import Hydra

    monkeypatch.setattr("sys.argv", ["cnn-summary"])
    monkeypatch.setattr(Hydra, "get_mode", Hydra.get_mode)  # main replaces it for this process: restored after
    for switch in ("HYDRA_FULL_ERROR", "CNN_CLI_FULL_ERROR"):  # main sets them for this process: restored after
        monkeypatch.setenv(switch, "0")
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


# ------------------------------------------------------------------ 4: work bounded by its cost before it starts

def test_command_line_values_nested_too_deep_are_refused_before_hydra_parses_them() -> None:
    from cnn_cli import bounds

    bounds.check_arguments(["model.layers=" + "[" * 100 + "]" * 100])  # deep, but within the bound
    for value in ("[" * 3000 + "]" * 3000, "{a: " * 300 + "1" + "}" * 300, "(" * 101):
        with pytest.raises(UserError, match=r"^model.layers=...: the value is nested more than 100 brackets deep"):
            bounds.check_arguments(["model=lenet5", f"model.layers={value}"])


def test_a_checkpoint_whose_member_expands_a_hundredfold_is_refused_unread(tmp_path: Path) -> None:
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("bomb/data.pkl", "w") as f:
        for _ in range(120):
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(UserError, match=r"checkpoint=.*bomb.pt: its member 'bomb/data.pkl' expands from .* to "
                                        r"125,829,120 bytes; torch does not compress checkpoints"):
        checkpoint.load(bomb)


def test_a_checkpoint_record_nested_too_deep_is_refused_before_anything_recursive_reads_it(tmp_path: Path) -> None:
    def deep(state: dict) -> None:
        node = state["config"]["model"]
        for _ in range(150):
            node["x"] = {}
            node = node["x"]

    best = save_run(tmp_path / "run", edit=deep)
    with pytest.raises(UserError, match=r"is nested more than 100 deep or holds more than 1,000,000 values"):
        checkpoint.load(best)


def test_a_checkpoint_record_of_shared_references_a_billion_values_wide_is_refused(tmp_path: Path) -> None:
    def laughs(state: dict) -> None:  # pickle's memo keeps it small: each level is ten references to the last
        node: list = ["lol"]
        for _ in range(9):
            node = [node] * 10
        state["config"]["model"]["laughs"] = node

    best = save_run(tmp_path / "run", edit=laughs)  # a few kB more than the weights, 10^9 values when walked
    with pytest.raises(UserError, match=r"holds more than 1,000,000 values; it was not written by cnn-cli"):
        checkpoint.load(best)


def test_a_model_whose_weights_exceed_the_free_memory_is_refused_before_it_is_allocated() -> None:
    from cnn_cli import bounds

    free = bounds.available_memory()
    width = free * 3 // 2 // 4 // 2450 + 1  # fc1 takes 50 x 7 x 7 = 2450 inputs: 1.5 x the free memory in float32
    if 2450 * width > 10_000_000_000:
        pytest.skip(f"{free / 1e9:.0f} GB free: such a model would pass the 10-billion-parameter limit first")
    cfg = compose("train", "model=lenet5", "dataset=mnist_sample", f"model.layers.7.linear.out_features={width}")
    with pytest.raises(UserError, match=r"model.layers\[7\] \(linear\): the model's .* float32 weights up to here "
                                        r"needs .* GB of memory, more than the .* GB free"):
        build_from_config(cfg)


@pytest.mark.parametrize("padding", [100000, 29, -1])
def test_crop_padding_is_bounded_by_the_samples_side(padding: int) -> None:
    cfg = compose("train", "dataset=mnist_sample", f"dataset.augment.crop_padding={padding}")
    with pytest.raises(UserError, match=rf"crop_padding={padding} must be from 0 to the samples' smallest side \(28\)"):
        data_mod.check(cfg.dataset)


def test_a_huge_or_multi_line_value_in_a_message_stays_one_readable_line() -> None:
    from cnn_cli.builder import build_model
    from cnn_cli.errors import describe

    with pytest.raises(UserError) as err:
        build_model(["x" * 900_000], (1, 28, 28))
    line = describe(err.value)
    assert len(line) < 3000 and re.search(r"\.\.\.\(900,00\d characters\)", line) and "\n" not in line
    forged = describe(UserError("inputs: bad\nerror: all is well\r\x1b[2K"))
    assert forged == "inputs: bad\\nerror: all is well\\r\\x1b[2K"


# ------------------------------------------------------------------ 7: no dead ends

def test_resuming_a_run_that_never_saved_says_so_and_how_to_start_again(tmp_path: Path) -> None:
    from cnn_cli import train

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)  # what a run killed in its first epoch leaves
    (run / "tb").mkdir()
    (run / "train.log").write_text("")
    with pytest.raises(UserError, match=r"^resume=.*run: .*run holds a run that stopped before it saved its first "
                                        r"checkpoint, so there is nothing to resume; remove it \(rm -r .*run\)"):
        train.prepare(compose("train", f"resume={run}"), tmp_path / "attempt", [f"resume={run}"])


def test_resuming_without_the_best_checkpoint_it_names_is_refused_up_front(saved_run: Path) -> None:
    with pytest.raises(UserError, match=r"^resume=.*: .*checkpoints/best.pt is missing \(the run saved it at epoch "
                                        r"2\); put it back, or start a new run .* init_from=.*last.pt"):
        _resume(saved_run, lambda state: state["progress"].update(best_epoch=2, epoch=2))


# ------------------------------------------------------------------ 8: no leftovers, no side effects

def test_a_write_removes_the_temporary_files_of_dead_processes_only(tmp_path: Path) -> None:
    dead = tmp_path / ".best.onnx.999999999.k2j4_x.tmp"  # beyond any PID: no such process
    alive = tmp_path / f".best.onnx.{os.getppid()}.a8d7f1.tmp"  # a live process may be writing it now
    other = tmp_path / "notes.tmp"
    for path in (dead, alive, other):
        path.write_text("partial")
    files.write_text(tmp_path / "report.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "report.json"])


def test_values_from_the_environment_are_shown_as_their_interpolation_in_the_log(tmp_path: Path, monkeypatch,
                                                                                   caplog) -> None:
    from cnn_cli import train

    monkeypatch.setenv("SECRET", "hunter2-token")
    cfg = compose("train", "dataset=mnist_sample", "trainer.device=cpu", "dataset.name=${oc.env:SECRET}")
    with caplog.at_level("INFO", logger="cnn_cli"):
        train.prepare(cfg, tmp_path / "run", [])
    assert "data: ${oc.env:SECRET}, 3500 train" in caplog.text and "hunter2" not in caplog.text


# ------------------------------------------------------------------ 9: messages

def test_predictions_csv_neutralises_formulas_and_printed_rows_escape_newlines(tmp_path: Path, capsys) -> None:
    classes = ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "plain", "6", "7", "8", "9"]
    best = save_run(tmp_path / "run", edit=lambda state: state["config"]["dataset"].update(classes=classes))
    name = tmp_path / "a\nerror: forged.png"
    Image.new("L", (28, 28)).save(name, "PNG")
    cfg = _predict_cfg(best, tmp_path, inputs=[str(name)], top_k=10, output=str(tmp_path / "p.csv"))
    run_predict(cfg)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1 and "a\\nerror: forged.png" in out
    import csv

    cells = [cell for row in csv.reader((tmp_path / "p.csv").open()) for cell in row]
    assert {"'=cmd|' /C calc'!A0", "'+1", "'-2", "'@SUM(A1)", "'\tx", "plain"} <= set(cells)
    assert not any(cell[:1] in "=+-@\t" for cell in cells)


def test_an_exif_rotated_first_image_gives_the_upright_shape_and_decodes(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    for name in ("ant", "bee"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            exif = Image.Exif()
            exif[0x0112] = 6  # stored 30 wide, 20 high; shown turned a quarter: 20 wide, 30 high
            Image.new("L", (30, 20), 40 * i).save(root / name / f"{i}.jpg", exif=exif)
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1")
    listing, cache = data_mod.resolve(cfg.dataset).found
    assert list(cfg.dataset.input_shape) == [1, 30, 20] and not cache.meta["bad"]
    from cnn_cli import images

    with pytest.raises(UserError, match=r"is 20x30 \(width x height\) once turned upright by its EXIF orientation "
                                        r"\(stored 30x20\) but the model takes 30x20"):
        images.decode_array(root / "ant" / "0.jpg", (1, 20, 30))


@pytest.mark.parametrize("override,says", [("optimizer.betas=[0.9]", r"optimizer.betas=\[0.9\]: Adam takes 2 values"),
                                           ("optimizer.betas=0.9", r"optimizer.betas=0.9: Adam takes 2 values"),
                                           ("optimizer.betas=[0.9,0.99,0.999]", r"e.g. optimizer.betas=\[0.9,0.999\]")])
def test_a_pair_argument_of_the_wrong_length_names_its_key(override: str, says: str) -> None:
    from cnn_cli import optim

    cfg = compose("train", "dataset=mnist_sample", "optimizer=adam", override)
    with pytest.raises(UserError, match=says):
        optim.check(cfg, 1)
