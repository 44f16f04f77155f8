"""The preprocessing contract: the sidecar client of docs/use-a-model.md (run as written) agrees
with cnn-predict on real PNG and JPEG files of odd sizes; cnn-predict runs exported files with their sidecar;
a sidecar from someone else is checked field by field. In-process."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from cnn_cli import contract, images
from cnn_cli.errors import UserError
from cnn_cli.export import run_export
from cnn_cli.predict import run_predict
from helpers import compose
from test_use_model import ROOT, export_cfg, save_checkpoint

SIZE = 24
ODD = [("wide.png", (37, 53), "RGB"), ("grey.png", (101, 29), "L"), ("alpha.png", (40, 41), "RGBA"),
       ("photo.jpg", (97, 75), "RGB"), ("small.jpg", (23, 31), "RGB"), ("tall.jpg", (50, 133), "L")]


def docs_client() -> str:
    """The ONNX Runtime client of docs/use-a-model.md, the page's one python block."""
    page = (ROOT / "docs" / "use-a-model.md").read_text()
    (client,) = re.findall(r"```python\n(.*?)```", page, re.S)
    return client


def picture(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """Smooth gradients with noise on top: a resize filter's choice shows in every pixel."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 40, (h, w, 3))
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    return image.convert(mode)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A two-class image folder of 30x30 RGB PNGs."""
    root = tmp_path_factory.mktemp("tree")
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir()
        for i in range(4):
            picture((30, 30), "RGB", 10 * c + i).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for i, (name, size, mode) in enumerate(ODD):
        picture(size, mode, 100 + i).save(folder / name, **({"quality": 90} if name.endswith(".jpg") else {}))
    return folder


def predict(checkpoint: str, inputs: Path, out: Path) -> dict[str, tuple[str, float]]:
    cfg = compose("predict", f"checkpoint={checkpoint}", f"inputs={inputs}", f"output={out}")
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_predict(cfg) == 0
    return {row["path"]: (row["prediction"], float(row["probability"])) for row in csv.DictReader(out.open())}


def run_client(folder: Path, files: list[str], monkeypatch) -> dict[str, tuple[str, float]]:
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["client.py", *files])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(docs_client(), "docs/use-a-model.md client", "exec"), {"__name__": "__main__"})
    rows = [line.split("\t") for line in out.getvalue().splitlines()]
    return {path: (label, float(p)) for path, label, p in rows}


@pytest.mark.slow  # an ONNX export a case: long for the fast tier
@pytest.mark.parametrize("policy, preprocess", [("shorter_side_then_center_crop", True), ("pad", False),
                                                ("stretch", True)])
def test_docs_client_agrees_with_cnn_predict_on_odd_png_and_jpeg_files(
        policy: str, preprocess: bool, tree: Path, inputs: Path, tmp_path: Path, monkeypatch) -> None:
    ckpt = save_checkpoint(tmp_path / "best.pt", ["model=lenet5_bn", "dataset=imagefolder", f"dataset.root={tree}",
                                                  f"dataset.input_shape=[3,{SIZE},{SIZE}]", f"dataset.resize={policy}",
                                                  "dataset.val_size=0", f"dataset.cache_dir={tmp_path / 'cache'}"])
    run_export(export_cfg(ckpt, "onnx", output=str(tmp_path / "best.onnx"), preprocess=preprocess, root=str(tree)))
    files = [str(inputs / name) for name, _, _ in ODD]
    client = run_client(tmp_path, files, monkeypatch)
    by_checkpoint = predict(str(ckpt), inputs, tmp_path / "checkpoint.csv")
    by_export = predict(str(tmp_path / "best.onnx"), inputs, tmp_path / "onnx.csv")  # the same CSV from the file
    assert sorted(client) == sorted(by_checkpoint) == sorted(by_export) == sorted(files)
    worst = 0.0
    for path in files:
        assert client[path][0] == by_checkpoint[path][0] == by_export[path][0], path
        worst = max(worst, *(abs(other[path][1] - by_checkpoint[path][1]) for other in (client, by_export)))
    print(f"\n{policy}: largest probability difference, the docs client or best.onnx vs cnn-predict: {worst:.1e}")
    assert worst < 1e-4
    # the large JPEG is one that draft mode would decode differently: the contract's full decode is what matters
    photo = inputs / "photo.jpg"
    draft = images.decode_array(photo, (3, SIZE, SIZE), policy, draft=True)
    assert not np.array_equal(draft, images.decode_array(photo, (3, SIZE, SIZE), policy))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A LeNet-5 for MNIST exported to ONNX with its sidecar."""
    tmp = tmp_path_factory.mktemp("exported")
    ckpt = save_checkpoint(tmp / "ck.pt", ["model=lenet5", "dataset=mnist_sample"])
    run_export(export_cfg(ckpt, "onnx", output=str(tmp / "m.onnx")))
    Image.new("L", (28, 28)).save(tmp / "digit.png")
    return tmp


def _edit(field: str, value):
    def edit(spec: dict) -> str:
        spec[field] = value
        return json.dumps(spec)
    return edit


HOSTILE = [  # (what, the sidecar's new text from the good one, the error)
    ("missing", None, r"its preprocessing contract m.onnx.preprocess.json is not beside it"),
    ("not JSON", lambda spec: "{oops", r"not valid JSON"),
    ("a list", lambda spec: "[1, 2]", r"not a JSON object"),
    ("deeply nested", lambda spec: "[" * 100_000, r"not valid JSON"),
    ("too large", lambda spec: " " * (9 * 1024 * 1024), r"larger than any contract \(8,388,608 bytes\)"),
    ("NaN mean", lambda spec: json.dumps(spec).replace(str(spec["mean"][0]), "NaN"), r"NaN is not a number"),
    ("zero std", _edit("std", [0]), r"std holds a value <= 0"),
    ("mean per channel", _edit("mean", [0.1, 0.2, 0.3]), r"mean is \[0.1, 0.2, 0.3\], not 1 numbers"),
    ("string size", _edit("input_shape", [1, "28", 28]), r"input_shape is \[1, \"28\", 28\], not 2 to 4"),
    ("huge size", _edit("input_shape", [1, 10 ** 9, 28]), r"not 2 to 4 sizes from 1 to 65536"),
    ("colour of another shape", _edit("color", "RGB"), r"color \"RGB\" does not fit input_shape \[1, 28, 28\]"),
    ("unknown resize", _edit("resize", {"policy": "lanczos"}), r"resize is .*, not a policy"),
    ("classes not names", _edit("classes", list(range(10))), r"classes is \[0, 1, 2, .*, not 2 to 100,000 names"),
    ("unknown format", _edit("file", {"format": "tflite", "in_model": []}), r"file is .*tflite.*, not the exported"),
    ("fewer classes than the model", _edit("classes", ["a", "b", "c"]), r"disagrees with the contract written"),
]


@pytest.mark.parametrize("what, edit, pattern", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_a_sidecar_from_someone_else_is_checked(what: str, edit, pattern: str, exported: Path, tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes((exported / "m.onnx").read_bytes())
    good = json.loads((exported / "m.onnx.preprocess.json").read_text())
    if edit is not None:
        (tmp_path / "m.onnx.preprocess.json").write_text(edit(good))
    with pytest.raises(UserError) as err:
        predict(str(tmp_path / "m.onnx"), exported / "digit.png", tmp_path / "out.csv")
    assert len(str(err.value).splitlines()) == 1 and re.search(pattern, str(err.value)), str(err.value)
    assert not (tmp_path / "out.csv").exists()


def test_a_contract_that_does_not_fit_the_model_is_refused(exported: Path, tmp_path: Path) -> None:
    """Sidecar and metadata edited alike: the model itself is asked."""
    import onnx

    model = onnx.load(str(exported / "m.onnx"))
    spec = json.loads((exported / "m.onnx.preprocess.json").read_text())
    wrong_size = r"does not take the contract's input \(uint8 1 x 1 x 20 x 20\)"
    for change, pattern in ((("classes", ["a", "b", "c"]), r"gives \[1, 10\] scores .* names 3 classes"),
                            (("input_shape", [1, 20, 20]), wrong_size)):
        edited = {**spec, change[0]: change[1]}
        for prop in model.metadata_props:
            if prop.key == "preprocess":
                prop.value = json.dumps(edited)
        onnx.save(model, str(tmp_path / "m.onnx"))
        (tmp_path / "m.onnx.preprocess.json").write_text(json.dumps(edited))
        with pytest.raises(UserError, match=pattern):
            predict(str(tmp_path / "m.onnx"), exported / "digit.png", tmp_path / "out.csv")


@pytest.mark.slow  # ONNX exports, each verified: long for the fast tier
def test_export_verifies_on_the_users_images(tree: Path, inputs: Path, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "best.pt", ["model=lenet5_bn", "dataset=imagefolder", f"dataset.root={tree}",
                                                  f"dataset.input_shape=[3,{SIZE},{SIZE}]", "dataset.resize=pad",
                                                  "dataset.val_size=0.25", f"dataset.cache_dir={tmp_path / 'cache'}"])
    out = str(tmp_path / "m.onnx")
    verified = run_export(export_cfg(ckpt, "onnx", output=out, root=str(tree)))["verified_on"]
    assert re.fullmatch(rf"[12] test images of root={tree}", verified), verified
    assert run_export(export_cfg(ckpt, "onnx", output=out, verify_inputs=str(inputs)))["verified_on"] == \
        f"{len(ODD)} images of verify_inputs={inputs}"
    assert run_export(export_cfg(ckpt, "onnx", output=out))["verified_on"] == \
        "64 random images (imagefolder not found) (give root=DIR or verify_inputs=DIR to verify on your images)"
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    for given, pattern in ((tmp_path / "nowhere", "is not a folder"), (inputs / "wide.png", "is not a folder"),
                           (tmp_path / "empty", "holds no readable image files"),
                           (tmp_path / "broken", "holds no readable image files")):
        with pytest.raises(UserError, match=f"verify_inputs={given} {pattern}"):
            run_export(export_cfg(ckpt, "onnx", output=out, verify_inputs=str(given)))


def decoded(path: Path, color: str) -> np.ndarray:
    """What a client of an any_size=true file does: decode, turn upright, convert; nothing else."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert(color)).reshape(image.height, image.width, -1)


@pytest.mark.slow  # an ONNX export a case: long for the fast tier
@pytest.mark.parametrize("policy", ["shorter_side_then_center_crop", "pad", "stretch"])
def test_an_any_size_onnx_file_classifies_decoded_files_as_cnn_predict_does(
        policy: str, tree: Path, inputs: Path, tmp_path: Path) -> None:
    import onnx

    from cnn_cli.export import _import_onnxruntime

    ckpt = save_checkpoint(tmp_path / "best.pt", ["model=lenet5_bn", "dataset=imagefolder", f"dataset.root={tree}",
                                                  f"dataset.input_shape=[3,{SIZE},{SIZE}]", f"dataset.resize={policy}",
                                                  "dataset.val_size=0", f"dataset.cache_dir={tmp_path / 'cache'}"])
    onnx_file = tmp_path / "any.onnx"
    report = run_export(export_cfg(ckpt, "onnx", output=str(onnx_file), any_size=True, root=str(tree)))
    assert report["input_spec"] == "image (H x W x C, uint8, any H and W)" and report["max_abs_difference"] < 1e-4
    assert report["output_spec"] == "logits (1 x 2, float32)"
    assert report["verified_on"].endswith("at the model's size (kept as it is by the resize)")
    spec = json.loads(contract.sidecar(onnx_file).read_text())
    assert spec["file"]["in_model"] == ["resize", "scale", "normalize"] and spec["file"]["input"] == "image"
    model = onnx.load(str(onnx_file))  # the resized pixels shown too, to compare with Pillow's
    model.graph.output.append(onnx.helper.make_tensor_value_info("pre/pixels", onnx.TensorProto.UINT8, None))
    session = _import_onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    by_checkpoint = predict(str(ckpt), inputs, tmp_path / "checkpoint.csv")
    by_file = predict(str(onnx_file), inputs, tmp_path / "onnx.csv")  # cnn-predict runs it too (Pillow-resized)
    worst_file, worst_graph, grey = 0.0, 0.0, []
    for name, _, _ in ODD:
        path = str(inputs / name)
        logits, pixels = session.run(["logits", "pre/pixels"], {"image": decoded(inputs / name, spec["color"])})
        grey.append(np.abs(pixels[0].astype(int) - images.decode(inputs / name, (3, SIZE, SIZE), policy).numpy()))
        probs = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
        assert spec["classes"][probs.argmax()] == by_checkpoint[path][0] == by_file[path][0], path
        worst_graph = max(worst_graph, abs(probs.max() - by_checkpoint[path][1]))
        worst_file = max(worst_file, abs(by_file[path][1] - by_checkpoint[path][1]))
    grey = np.stack(grey)
    print(f"\n{policy}: in-graph resize vs Pillow: grey levels max {grey.max()}, mean {grey.mean():.3f}; largest "
          f"probability difference from cnn-predict {worst_graph:.1e}, cnn-predict on the file {worst_file:.1e}")
    assert grey.max() <= 2 and grey.mean() < 0.25  # without exclude_outside=1, up to 15 grey levels
    assert worst_file < 1e-4 and worst_graph < 1e-2


def test_any_size_is_refused_where_it_cannot_be_built(tree: Path, exported: Path, tmp_path: Path) -> None:
    """.pt2 fixes the resized size; a model without a resize policy takes one size only."""
    ckpt = save_checkpoint(tmp_path / "best.pt", ["model=lenet5", "dataset=imagefolder", f"dataset.root={tree}",
                                                  f"dataset.input_shape=[3,{SIZE},{SIZE}]", "dataset.val_size=0",
                                                  f"dataset.cache_dir={tmp_path / 'cache'}"])
    cases = [(ckpt, {"format": "exported"}, r"format=exported cannot take images of any size"),
             (ckpt, {"preprocess": False}, r"needs preprocess=true"),
             (ckpt, {"opset": 17}, r"needs opset >= 18 \(Resize with antialias\)"),
             (exported / "ck.pt", {}, r"dataset mnist_sample has no resize policy, so it takes 1x28x28 samples only")]
    for checkpoint, changes, pattern in cases:
        out = tmp_path / "any.out"
        cfg = export_cfg(checkpoint, "onnx", output=str(out), any_size=True, root=str(tree))
        cfg.update(changes)
        with pytest.raises(UserError, match=pattern) as err:
            run_export(cfg)
        assert len(str(err.value).splitlines()) == 1 and not out.exists() and not contract.sidecar(out).exists()


def test_an_any_size_torchscript_file_classifies_decoded_files_as_cnn_predict_does(
        tree: Path, inputs: Path, tmp_path: Path) -> None:
    import torch

    from cnn_cli import anysize
    from cnn_cli.export import _asked_for_torchscript, _load_torchscript

    ckpt = save_checkpoint(tmp_path / "best.pt", ["model=lenet5_bn", "dataset=imagefolder", f"dataset.root={tree}",
                                                  f"dataset.input_shape=[3,{SIZE},{SIZE}]", "dataset.val_size=0",
                                                  f"dataset.cache_dir={tmp_path / 'cache'}"])
    script = tmp_path / "any.torchscript.pt"
    run_export(export_cfg(ckpt, "torchscript", output=str(script), any_size=True, root=str(tree)))
    model = _load_torchscript(script)
    by_checkpoint = predict(str(ckpt), inputs, tmp_path / "checkpoint.csv")
    by_file = predict(str(script), inputs, tmp_path / "script.csv")
    for name, _, _ in ODD:
        path = str(inputs / name)
        probs = model(torch.from_numpy(decoded(inputs / name, "RGB").copy())).softmax(1)[0]
        assert ["cat", "dog"][probs.argmax()] == by_checkpoint[path][0] == by_file[path][0], path
        assert abs(probs.max().item() - by_checkpoint[path][1]) < 1e-2, path
    spec = json.loads(contract.sidecar(script).read_text())
    for policy in ("shorter_side_then_center_crop", "pad", "stretch"):  # the scripted resize, pixel by pixel
        with _asked_for_torchscript():
            resize = torch.jit.script(anysize.Resized(torch.nn.Identity(), {**spec, "resize": {"policy": policy}}))
        grey = np.stack([np.abs(resize(torch.from_numpy(decoded(inputs / name, "RGB").copy()))[0].numpy().astype(int)
                                - images.decode(inputs / name, (3, SIZE, SIZE), policy).numpy()) for name, _, _ in ODD])
        assert grey.max() <= 2 and grey.mean() < 0.25, policy
