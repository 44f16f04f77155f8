"""cnn-predict on image files and cnn-export to ONNX, TorchScript and torch.export, each file
verified with its own runtime: on a tiny trained LeNet-5 and on every architecture shipped."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnn_cli import checkpoint, data as data_mod
from cnn_cli.builder import build_from_config
from cnn_cli.errors import UserError
from cnn_cli.evaluate import evaluate
from cnn_cli.trained import load_trained
from cnn_cli.export import run_export
from helpers import Started, cnn, compose, one_error_line


ROOT = Path(__file__).resolve().parents[1]
PICKED = [0, 150, 250, 350, 450, 550, 650, 750, 850, 950]  # sample test images of every class (sorted by class)
CIFAR = ["dataset=random", "dataset.num_images=[2,64]"]
DATASETS = {"lenet5": ["dataset=mnist_sample"], "lenet5_bn": ["dataset=mnist_sample"], "mlp": ["dataset=mnist_sample"],
            "lenet5_1998": ["dataset=mnist_sample"],
            "alexnet": ["dataset=random", "dataset.input_shape=[3,227,227]", "dataset.num_images=[2,4]"],
            "imu_cnn1d": ["dataset=basic_motions"],  # 1-D, float readings
            "voxel_cnn3d": ["dataset=random", "dataset.input_shape=[1,8,8,8]", "dataset.num_images=[2,64]"]}
ARCHITECTURES = {path.stem: DATASETS.get(path.stem, CIFAR)
                 for path in sorted((ROOT / "configs" / "model").glob("*.yaml"))}


def sample_test_images() -> tuple[np.ndarray, np.ndarray]:
    """The bundled MNIST sample's test split as cnn-train holds it: uint8 (N, 1, 28, 28), labels."""
    data = data_mod.load(compose("train", "dataset=mnist_sample").dataset)
    return data.test.images.numpy(), data.test.labels.numpy()


def save_checkpoint(path: Path, overrides: list[str], seed: int = 0) -> Path:
    """An untrained model of a config as cnn-train would save it, its batchnorm statistics
    and affine parameters made non-trivial so that folding them changes every weight."""
    cfg = compose("train", *overrides)
    data_mod.resolve(cfg.dataset)  # as cnn-train does before it records the config
    torch.manual_seed(seed)
    model = build_from_config(cfg).model
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    checkpoint.save({**{key: {} for key in checkpoint.FORMAT}, "finished": True, "model": model.state_dict(),
                     "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


def export_cfg(ckpt: Path, fmt: str, **changes) -> dict:
    return OmegaConf.create({"checkpoint": str(ckpt), "format": fmt, "output": None, "fuse_bn": True,
                             "preprocess": True, "any_size": False, "opset": None, "root": None, "verify_inputs": None,
                             **changes})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A LeNet-5 with batchnorm trained for 10 batches on the bundled sample: its best.pt."""
    tmp = tmp_path_factory.mktemp("trained")
    cnn("cnn-train", "experiment=smoke", "model=lenet5_bn", "trainer.progress=false", "trainer.limit_train_batches=10",
        f"hydra.run.dir={tmp / 'run'}", cwd=tmp)
    return tmp / "run" / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def predicted(trained: Path, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, list[str]]:
    """cnn-predict top_k=3 on a folder of PNG digits (one in a subfolder, one inverted, one
    RGB JPEG), a damaged PNG, a pipe named like an image, a .npy of the same digits, and a
    .npy of pickled objects."""
    tmp = tmp_path_factory.mktemp("predict")
    images, _ = sample_test_images()
    digits = tmp / "digits"
    (digits / "more").mkdir(parents=True)
    names = [digits / f"{i:04d}.png" for i in PICKED[:-1]] + [digits / "more" / f"{PICKED[-1]:04d}.png"]
    for name, i in zip(names, PICKED):
        Image.fromarray(images[i, 0]).save(name)
    Image.fromarray(255 - images[PICKED[1], 0]).save(digits / "more" / "inverted.png")
    Image.fromarray(images[PICKED[2], 0]).convert("RGB").save(digits / "more" / "rgb.jpg", quality=100)
    (digits / "damaged.png").write_bytes(Image.open(names[0]).tobytes()[:100])
    os.mkfifo(digits / "pipe.png")
    (digits / "notes.txt").write_text("not an image, and not named like one: ignored in a folder")
    np.save(tmp / "digits.npy", images[PICKED])
    np.save(tmp / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)  # loading it could run code
    proc = cnn("cnn-predict", f"checkpoint={trained}", "inputs=[digits,digits.npy,pickled.npy]", "top_k=3",
               "output=out/preds.csv", cwd=tmp, check=False)  # exit 1: files were skipped
    return proc, tmp, [str(n.relative_to(tmp)) for n in names]


@pytest.mark.e2e
def test_predict_gives_the_classes_cnn_eval_gives_for_the_same_images(trained: Path, predicted) -> None:
    proc, tmp, names = predicted
    model = load_trained(trained)
    config = model.config
    data = data_mod.load(config.dataset)
    expected = evaluate(model.model, data, data.test, 256, tta=None).predictions[PICKED].tolist()
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    by_name = {line[0]: line for line in lines}
    assert [int(by_name[n][1]) for n in names] == expected
    assert [int(by_name[f"digits.npy[{k}]"][1]) for k in range(len(PICKED))] == expected
    with torch.inference_mode():
        probs = model.model(model.normalize(data.test.images[PICKED])).softmax(1)
    assert [float(by_name[n][2]) for n in names] == pytest.approx(probs.max(1).values.tolist(), abs=1e-6)
    assert int(by_name["digits/more/rgb.jpg"][1]) == expected[2]  # RGB is converted to the model's grey
    assert list(by_name) == sorted(n for n in by_name if not n.startswith("digits.npy")) + \
        [f"digits.npy[{k}]" for k in range(len(PICKED))]  # folders sorted, recursively, then the next input


@pytest.mark.e2e
def test_predict_writes_csv_with_top_k_columns_and_lists_skipped_files(predicted) -> None:
    proc, tmp, names = predicted
    assert proc.returncode == 1, proc.stderr  # a file was skipped
    rows = list(csv.reader((tmp / "out" / "preds.csv").open()))
    assert rows[0] == ["path", "prediction", "probability", "top2", "probability2", "top3", "probability3"]
    assert rows[1:] == [line.split("\t") for line in proc.stdout.splitlines()]
    for row in rows[1:]:
        probabilities = [float(p) for p in row[2::2]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-5
        assert len(set(row[1::2])) == 3
    assert len(rows) == 1 + 12 + len(PICKED)  # the digits, the inverted and the RGB one, the .npy's
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2 and "digits/damaged.png" in skipped[0] and "pickled.npy" in skipped[1]


@pytest.mark.e2e
def test_predict_notes_inputs_that_look_inverted_for_an_mnist_model(predicted) -> None:
    proc, _, _ = predicted
    notes = [line for line in proc.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and notes[0].startswith("note: 1 of 22 inputs look inverted")


def test_predict_takes_a_npy_of_float_readings_for_a_1d_model(tmp_path: Path, monkeypatch, capsys) -> None:
    from cnn_cli.predict import run_predict

    ckpt = save_checkpoint(tmp_path / "imu.pt", ["model=imu_cnn1d", "dataset=basic_motions"])
    trained = load_trained(ckpt)
    data = data_mod.load(trained.config.dataset)
    np.save(tmp_path / "series.npy", data.test.images.numpy())  # 40 x 6 x 100 float32
    monkeypatch.chdir(tmp_path)
    cfg = compose("predict", "checkpoint=imu.pt", "inputs=series.npy")
    assert run_predict(cfg) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    classes = list(trained.config.dataset.classes)
    expected = evaluate(trained.model, data, data.test, 16, tta=None).predictions.tolist()
    assert [(name, classes.index(label)) for name, label, _ in lines] == \
        [(f"series.npy[{i}]", c) for i, c in enumerate(expected)]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "exported"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_exports_and_verifies_in_every_format(arch: str, fmt: str, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "model.pt", [f"model={arch}", *ARCHITECTURES[arch]])
    report = run_export(export_cfg(ckpt, fmt))
    assert report["max_abs_difference"] < 1e-4
    verified = int(report["same_predictions"].split("/")[1])
    assert report["same_predictions"] == f"{verified}/{verified}" and verified >= 40
    assert Path(report["output"]).stat().st_size == report["bytes"] > 0
    written = Path(report["output"]).name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", written, f"{written}.preprocess.json"])
    dataset = torch.load(ckpt, weights_only=True)["config"]["dataset"]
    raw = "float32" if dataset["source"] == "basic_motions" else "uint8"
    assert report["input_spec"] == f"images (N x {' x '.join(map(str, dataset['input_shape']))}, {raw})"
    assert report["output_spec"] == f"logits (N x {dataset['num_classes']}, float32)"


@pytest.mark.slow  # two ONNX exports, each verified: long for the fast tier
def test_preprocess_bakes_in_exactly_the_normalisation(tmp_path: Path) -> None:
    """The raw-uint8 ONNX model equals normalise-then-model, and the normalised-input one takes
    what cnn-cli's own normalisation gives."""
    ckpt = save_checkpoint(tmp_path / "model.pt", ["model=lenet5_bn", "dataset=mnist_sample"])
    raw_file = run_export(export_cfg(ckpt, "onnx", output=str(tmp_path / "raw.onnx")))["output"]
    float_file = run_export(export_cfg(ckpt, "onnx", output=str(tmp_path / "float.onnx"), preprocess=False))["output"]
    trained = load_trained(ckpt)
    images = torch.from_numpy(sample_test_images()[0][:50])
    with torch.inference_mode():
        expected = trained.model(trained.normalize(images)).numpy()
    raw = onnxruntime.InferenceSession(raw_file).run(None, {"images": images.numpy()})[0]
    normalised = onnxruntime.InferenceSession(float_file).run(None, {"images": trained.normalize(images).numpy()})[0]
    assert np.abs(raw - expected).max() < 1e-4 and np.abs(normalised - expected).max() < 1e-4
    assert onnxruntime.InferenceSession(float_file).get_inputs()[0].type == "tensor(float)"
    assert onnxruntime.InferenceSession(raw_file).get_inputs()[0].type == "tensor(uint8)"


@pytest.mark.slow  # an ONNX export, verified: long for the fast tier
def test_opset_is_the_one_asked_for(tmp_path: Path) -> None:
    import onnx

    ckpt = save_checkpoint(tmp_path / "model.pt", ["model=lenet5_bn", "dataset=mnist_sample"])
    written = onnx.load(run_export(export_cfg(ckpt, "onnx", opset=17))["output"])
    assert [(op.domain, op.version) for op in written.opset_import if op.domain in ("", "ai.onnx")] == [("", 17)]
    assert {p.key: p.value for p in written.metadata_props}["opset"] == "17"


@pytest.mark.slow  # ONNX exports, each verified: long for the fast tier
def test_an_export_that_differs_from_pytorch_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    """Weights scaled so that the logits reach ~1e8: float32 rounding in another runtime's
    kernels then differs by far more than 1e-4, and the file must not be kept."""
    ckpt = save_checkpoint(tmp_path / "model.pt", ["model=lenet5", "dataset=mnist_sample"])
    state = torch.load(ckpt, weights_only=True)
    state["model"] = {k: v * 30 for k, v in state["model"].items()}
    checkpoint.save(state, ckpt)
    with pytest.raises(UserError, match=r"differs from the PyTorch model by up to .* nothing was kept"):
        run_export(export_cfg(ckpt, "onnx"))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


@pytest.mark.e2e
def test_an_onnx_export_leaves_nothing_in_the_users_cache(trained: Path, tmp_path: Path) -> None:
    """onnxruntime's telemetry would write a device id and a database in ~/.cache/Microsoft/."""
    cache = tmp_path / "cache"
    export = cnn("cnn-export", f"checkpoint={trained}", "format=onnx", "output=best.onnx", cwd=tmp_path,
                 env={"XDG_CACHE_HOME": str(cache), "HOME": str(tmp_path)})
    assert re.search(r"largest logit difference from PyTorch \S+, same predictions", export.stdout), export.stdout
    assert not cache.exists() or not any(cache.iterdir()), sorted(cache.rglob("*"))
    assert not (tmp_path / ".cache").exists(), sorted((tmp_path / ".cache").rglob("*"))


BAD = [  # (what, tool, args, the error must match); "cli" ones run as commands, the rest in this process
    ("missing checkpoint", "export", ["checkpoint=nowhere.pt"], r"checkpoint=nowhere.pt: no checkpoint there"),
    ("unknown format", "cli export", ["checkpoint=ck.pt", "format=tflite"], r"format=tflite: choose one of onnx, "),
    ("opset not written", "cli export", ["checkpoint=ck.pt", "opset=5"],
     r"opset=5: torch's ONNX exporter cannot write it"),
    ("opset without onnx", "export", ["checkpoint=ck.pt", "format=exported", "opset=17"], r"opset=17 is for format"),
    ("missing extra", "cli export", ["checkpoint=ck.pt"],
     r"format=onnx needs the optional extra 'export' \(onnxruntime is missing\): pip install 'cnn-cli\[export\]'"),
    ("output is a folder", "export", ["checkpoint=ck.pt", "format=exported", "output=pics"],
     r"output=pics is a folder"),
    ("output is a pipe", "predict", ["checkpoint=ck.pt", "inputs=pics", "output=pipe.csv"],
     r"output=pipe.csv is not a regular file"),
    ("output is the checkpoint", "export", ["checkpoint=ck.pt", "format=exported", "output=./ck.pt"],
     r"output=./ck.pt is a checkpoint, which writing there would destroy"),
    ("not an image", "predict", ["checkpoint=ck.pt", "inputs=[notes.txt]"], r"inputs: notes.txt is not an image"),
    ("wrong size", "cli predict", ["checkpoint=ck.pt", "inputs=pics"],
     r"pics/big.png is 32x30 \(width x height\) but the model takes 28x28 images and its dataset"),
    ("missing input", "predict", ["checkpoint=ck.pt", "inputs=[gone.png]"], r"inputs: gone.png does not exist"),
    ("a device", "predict", ["checkpoint=ck.pt", "inputs=[/dev/zero]"], r"inputs: /dev/zero is not a regular"),
    ("no images in folder", "predict", ["checkpoint=ck.pt", "inputs=empty"], r"inputs: the folder empty holds no"),
    ("float npy", "predict", ["checkpoint=ck.pt", "inputs=x.npy"], r"x.npy holds float32 values; give uint8"),
    ("wrong npy shape", "predict", ["checkpoint=ck.pt", "inputs=flat.npy"], r"flat.npy holds an array of shape 2 x 28 "
                                                                           r"x 28; the model takes N x 1 x 28 x 28"),
    ("top_k too large", "predict", ["checkpoint=ck.pt", "inputs=pics", "top_k=11"], r"top_k=11 must be between 1"),
    ("no inputs", "cli predict", ["checkpoint=ck.pt"], r"give a checkpoint and inputs"),
    ("not a checkpoint", "predict", ["checkpoint=notes.txt", "inputs=pics"], r"checkpoint=notes.txt: notes.txt is not"),
]


@pytest.mark.e2e
def test_bad_input_is_one_line_and_exit_status_2(tmp_path: Path, monkeypatch) -> None:
    from cnn_cli.predict import run_predict

    save_checkpoint(tmp_path / "ck.pt", ["model=lenet5", "dataset=mnist_sample"])
    (tmp_path / "pics").mkdir()
    (tmp_path / "empty").mkdir()
    Image.new("L", (32, 30)).save(tmp_path / "pics" / "big.png")
    (tmp_path / "notes.txt").write_text("hello")
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    np.save(tmp_path / "flat.npy", np.zeros((2, 28, 28), np.uint8))
    os.mkfifo(tmp_path / "pipe.csv")
    shim = tmp_path / "shim"  # onnxruntime not installed: its import fails as it does without the extra
    shim.mkdir()
    (shim / "onnxruntime.py").write_text("raise ModuleNotFoundError('No module named onnxruntime', name='onnxruntime')")
    # the command's entry point in a forked process; the installed script where a fresh interpreter
    # must find onnxruntime missing
    procs = [(what, pattern, Started(f"cnn-{tool.split()[1]}", *args, cwd=tmp_path, timeout=300,
                                     env={"PYTHONPATH": str(shim)} if what == "missing extra" else None,
                                     fork=what != "missing extra"))
             for what, tool, args, pattern in BAD if tool.startswith("cli")]
    monkeypatch.chdir(tmp_path)
    for what, tool, args, pattern in BAD:
        if tool.startswith("cli"):
            continue
        cfg = compose(tool, *args)
        with pytest.raises(UserError) as err:
            (run_predict if tool == "predict" else run_export)(cfg)
        assert len(str(err.value).splitlines()) == 1 and re.match(pattern, str(err.value)), (what, str(err.value))
    for what, pattern, proc in procs:
        line = one_error_line(proc.result())
        assert re.match(r"error: " + pattern, line), (what, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "empty", "flat.npy", "notes.txt", "pics",
                                                          "pipe.csv", "shim", "x.npy"]
    assert (tmp_path / "pipe.csv").is_fifo()
