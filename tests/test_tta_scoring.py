"""A flip-TTA checkpoint (trainer.tta=flip) used as its run scored it: cnn-predict, cnn-export
(every format) and cnn-predict on the exported file all give the mean of the logits of each
image and its mirror image, as cnn-eval does; a damaged stored tta is refused by each."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnn_cli import checkpoint
from cnn_cli.errors import UserError
from cnn_cli.evaluate import run_eval
from cnn_cli.export import TOLERANCE, FORMATS, run_export
from cnn_cli.predict import run_predict
from cnn_cli.trained import load_trained
from helpers import compose
from test_use_model import export_cfg, save_checkpoint

FLIP = ["model=lenet5_bn", "dataset=random", "dataset.num_images=[2,16]", "trainer.tta=flip"]


@pytest.fixture(scope="module")
def flip_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("flip") / "best.pt", FLIP)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """16 raw uint8 pictures as a .npy, as the dataset stores them."""
    raw = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp("samples") / "pictures.npy"
    np.save(path, raw.numpy())
    return path, raw


def predict(checkpoint: str | Path, inputs: Path, out: Path) -> list[tuple[str, float]]:
    """cnn-predict's CSV: (class, probability) a sample, in order."""
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_predict(compose("predict", f"checkpoint={checkpoint}", f"inputs={inputs}", f"output={out}",
                                   "device=cpu")) == 0
    return [(row["prediction"], float(row["probability"])) for row in csv.DictReader(out.open())]


def logits(module: torch.nn.Module, trained, raw: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return module(trained.normalize(raw))


def test_cnn_predict_scores_a_flip_tta_checkpoint_as_cnn_eval_does(flip_checkpoint: Path, samples,
                                                                    tmp_path: Path) -> None:
    path, raw = samples
    trained = load_trained(flip_checkpoint)
    assert trained.tta == "flip"
    flipped = logits(trained.scoring(), trained, raw).softmax(1)
    plain = logits(trained.model, trained, raw).softmax(1)
    assert (flipped - plain).abs().max() > 1e-3  # the test can fail: the mirror image changes the scores
    classes = list(trained.config.dataset.classes)
    got = predict(flip_checkpoint, path, tmp_path / "preds.csv")
    assert [name for name, _ in got] == [classes[i] for i in flipped.argmax(1).tolist()]
    assert np.allclose([p for _, p in got], flipped.max(1).values.numpy(), atol=2e-6)


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.slow),  # an ONNX export: long for the fast tier
                                 "torchscript", "exported"])
def test_an_export_of_a_flip_tta_checkpoint_computes_what_cnn_eval_scores(fmt: str, flip_checkpoint: Path, samples,
                                                                          tmp_path: Path) -> None:
    path, raw = samples
    report = run_export(export_cfg(flip_checkpoint, fmt, output=str(tmp_path / f"model{FORMATS[fmt].suffix}")))
    out = Path(report["output"])
    spec = json.loads(Path(report["contract"]).read_text())
    assert spec["file"]["tta"] == "flip" and report["max_abs_difference"] < TOLERANCE
    trained = load_trained(flip_checkpoint)
    with torch.inference_mode():
        got = FORMATS[fmt].load(out)(raw).float()  # preprocess=true: raw pixels in
    assert (got - logits(trained.scoring(), trained, raw)).abs().max() < TOLERANCE
    assert (got - logits(trained.model, trained, raw)).abs().max() > 1e-2  # not the model on the image alone
    by_file = predict(out, path, tmp_path / "file.csv")
    by_checkpoint = predict(flip_checkpoint, path, tmp_path / "checkpoint.csv")
    assert [c for c, _ in by_file] == [c for c, _ in by_checkpoint]
    assert np.allclose([p for _, p in by_file], [p for _, p in by_checkpoint], atol=1e-4)


def test_an_export_of_a_plain_checkpoint_records_no_tta(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "best.pt", FLIP[:-1])
    report = run_export(export_cfg(ckpt, "torchscript"))
    assert json.loads(Path(report["contract"]).read_text())["file"]["tta"] is None
    assert report["tta"] is None


@pytest.mark.parametrize("overrides, stored, message", [
    (FLIP, "rotate", "trainer.tta=rotate: choose flip"),
    (["dataset=basic_motions", "model=imu_cnn1d"], "flip", "trainer.tta=flip mirrors images left to right, but the "
                                                           "samples are 1-D signals"),
])
def test_a_damaged_stored_tta_is_refused_by_eval_predict_and_export(overrides: list[str], stored: str, message: str,
                                                                    samples, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "best.pt", overrides)
    state = torch.load(ckpt, weights_only=True)
    state["config"]["trainer"]["tta"] = stored  # as an edit or damage leaves it
    checkpoint.save(state, ckpt)
    expected = f"checkpoint={ckpt}: its stored config is not valid ({message}"
    for use in (lambda: run_eval(compose("eval", f"checkpoint={ckpt}", "device=cpu")),
                lambda: predict(ckpt, samples[0], tmp_path / "preds.csv"),
                lambda: run_export(export_cfg(ckpt, "torchscript"))):
        with pytest.raises(UserError) as err:
            use()
        assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]  # nothing written


def test_a_sidecar_with_an_unknown_tta_is_refused(flip_checkpoint: Path, samples, tmp_path: Path) -> None:
    report = run_export(export_cfg(flip_checkpoint, "torchscript", output=str(tmp_path / "model.torchscript.pt")))
    side = Path(report["contract"])
    spec = json.loads(side.read_text())
    spec["file"]["tta"] = "rotate"
    side.write_text(json.dumps(spec))
    with pytest.raises(UserError, match=r"preprocess\.json: file is .* its test-time augmentation \(tta\)"):
        predict(report["output"], samples[0], tmp_path / "preds.csv")
