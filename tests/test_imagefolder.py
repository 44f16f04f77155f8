"""dataset=imagefolder on tiny generated trees of PNG and JPEG files (grey and colour, several
sizes, one corrupt file): discovery, splits, the cache, the memory-mapped mode, resizing,
bad input; and one cnn-train run end to end, stopped and resumed."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnn_cli import checkpoint, data, imagefolder, images
from cnn_cli.errors import UserError
from cnn_cli.evaluate import run_eval
from helpers import BIN, cnn, compose


CLASSES = ["ant", "bee", "cow"]


def write_tree(root: Path, per_class: int = 10, corrupt: bool = True) -> Path:
    """root/<class>/*.png|jpg: colour and grey images of three sizes, each class its own brightness."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            h, w = (16, 20, 24)[i % 3], (20, 16, 24)[i % 3]
            pixels = (rng.random((h, w, 3)) * 60 + 40 + c * 70).astype(np.uint8)
            image = Image.fromarray(pixels) if i % 4 != 1 else Image.fromarray(pixels[..., 0], "L")
            image.save(folder / f"{i:02d}.{'jpg' if i % 2 else 'png'}")
    if corrupt:
        (root / "bee" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def dataset(root: Path, *overrides: str):
    return compose("train", "dataset=imagefolder", f"dataset.root={root}", *overrides).dataset


@pytest.fixture(autouse=True)
def fresh_process_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test opens its caches as a new process would."""
    monkeypatch.setattr(imagefolder, "_OPENED", {})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "pics")


def test_classes_shape_and_normalisation_come_from_the_files(tree: Path) -> None:
    cfg = dataset(tree)
    data.resolve(cfg)
    assert list(cfg.classes) == CLASSES and cfg.num_classes == 3
    assert list(cfg.input_shape) == [3, 16, 20]  # ant/00.png: the first training image
    loaded = data.load(cfg)
    pixels = loaded.train.images.double() / 255
    assert np.allclose(cfg.mean, pixels.mean((0, 2, 3)).tolist(), atol=1e-5)
    assert np.allclose(cfg.std, pixels.std((0, 2, 3), unbiased=False).tolist(), atol=1e-5)
    assert loaded.skipped_files == 1
    assert loaded.train.images.dtype == torch.uint8 and loaded.train.images.shape[1:] == (3, 16, 20)


def test_a_plain_tree_is_split_stratified_disjoint_and_the_same_every_time(tree: Path) -> None:
    cfg = dataset(tree, "dataset.val_size=0.2", "dataset.test_size=3")
    data.resolve(cfg)
    first, again = data.load(cfg), data.load(cfg)
    assert [len(first.train), len(first.val), len(first.test)] == [21, 6, 3]  # 30 readable files
    assert torch.bincount(first.val.labels).tolist() == [2, 2, 2]  # a fifth of each class
    assert torch.bincount(first.test.labels).tolist() == [1, 1, 1]
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    rows = [tuple(x.flatten().tolist()) for s in (first.train, first.val, first.test) for x in s.images]
    assert len(set(rows)) == 30  # no image in two splits
    other = data.load(dataset(tree, "dataset.val_size=0.2", "dataset.test_size=3", "dataset.split_seed=1"))
    assert not torch.equal(other.val.images, first.val.images)


def test_a_tree_with_split_folders_keeps_them_and_classes_must_agree(tmp_path: Path) -> None:
    for split, n in (("train", 8), ("val", 4), ("test", 5)):
        write_tree(tmp_path / "t" / split, per_class=n, corrupt=False)
    cfg = dataset(tmp_path / "t")
    data.resolve(cfg)
    loaded = data.load(cfg)
    assert [len(loaded.train), len(loaded.val), len(loaded.test)] == [24, 12, 15]
    (tmp_path / "t" / "val" / "cow").rename(tmp_path / "t" / "val" / "cat")
    with pytest.raises(UserError, match=r"classes of val/ differ from train/'s: missing \['cow'\]; extra \['cat'\]"):
        data.resolve(dataset(tmp_path / "t"))


def test_the_cache_is_reused_and_any_change_to_a_file_or_setting_decodes_afresh(tree: Path, monkeypatch,
                                                                                 caplog) -> None:
    caplog.set_level("INFO", "cnn_cli")
    data.resolve(dataset(tree))
    cache_files = lambda: sorted((tree / ".cnn-cache").glob("*.npy"))  # noqa: E731
    [first] = cache_files()
    written = first.stat().st_mtime_ns
    monkeypatch.setattr(imagefolder, "_OPENED", {})
    data.resolve(dataset(tree))
    assert cache_files() == [first] and first.stat().st_mtime_ns == written
    assert "image cache reused" in caplog.text
    Image.new("RGB", (20, 16), "white").save(tree / "ant" / "00.png")  # same name, new pixels
    data.resolve(dataset(tree))
    assert len(cache_files()) == 2
    data.resolve(dataset(tree, "dataset.input_shape=[1,8,8]"))
    data.resolve(dataset(tree, "dataset.input_shape=[1,8,8]", "dataset.resize=stretch"))
    assert len(cache_files()) == 4
    assert not list((tree / ".cnn-cache").glob(".*.tmp"))


def test_a_damaged_cache_is_decoded_again(tree: Path, monkeypatch, caplog) -> None:
    cfg = dataset(tree)
    expected = data.load(cfg).train.images
    [cache] = (tree / ".cnn-cache").glob("*.npy")
    for damage in (lambda: cache.write_bytes(cache.read_bytes()[:-100]), lambda: cache.write_bytes(b"\x93NUMPY junk"),
                   lambda: cache.with_suffix(".json").write_text("[1, 2")):
        damage()
        monkeypatch.setattr(imagefolder, "_OPENED", {})
        assert torch.equal(data.load(dataset(tree)).train.images, expected)
    assert caplog.text.count("is damaged") == 3


def test_greyscale_and_colour_conversion_and_the_three_resize_policies(tmp_path: Path) -> None:
    wide = Image.new("RGB", (40, 20), "white")  # width 40, height 20: left half red
    wide.paste((255, 0, 0), (0, 0, 20, 20))
    path = tmp_path / "wide.png"
    wide.save(path)
    crop = images.decode(path, [3, 10, 10], "shorter_side_then_center_crop")
    assert crop.shape == (3, 10, 10) and crop[1, :, :4].max() < 30 and crop[1, :, 6:].min() > 225  # the middle
    stretch = images.decode(path, [3, 10, 10], "stretch")
    assert stretch[1, :, :4].max() < 30 and stretch[1, :, 6:].min() > 225
    pad = images.decode(path, [3, 10, 10], "pad")
    assert pad[:, :2].max() == 0 and pad[:, -2:].max() == 0 and pad[0, 3:7].min() > 225  # black above and below
    grey = images.decode(path, [1, 10, 10], "stretch")
    assert grey.shape == (1, 10, 10)
    Image.new("RGB", (10, 10), (0, 0, 255)).convert("P").save(tmp_path / "palette.png")
    assert images.decode(tmp_path / "palette.png", [3, 10, 10])[2].min() == 255


def test_the_memory_map_gives_exactly_the_batches_of_memory(tree: Path) -> None:
    cfg = dataset(tree, "dataset.augment.crop_padding=2", "dataset.augment.flip=true")
    data.resolve(cfg)
    in_memory = data.load(cfg)
    cfg.max_memory_gb = 0  # any cache is larger
    mapped = data.load(cfg)
    assert isinstance(mapped.train.images, imagefolder.MappedSamples)
    plan = data.epoch_plan(len(in_memory.train), seed=3, epoch=1, crop_padding=2, flip=True)
    for (x, y), (mx, my) in zip(data.train_batches(in_memory, 4, plan, 2), data.train_batches(mapped, 4, plan, 2),
                                strict=True):
        assert torch.equal(x, mx) and torch.equal(y, my)
    for split, mapped_split in ((in_memory.val, mapped.val), (in_memory.test, mapped.test)):
        for (x, y), (mx, my) in zip(data.eval_batches(in_memory, split, 3), data.eval_batches(mapped, mapped_split, 3),
                                    strict=True):
            assert torch.equal(x, mx) and torch.equal(y, my)


@pytest.mark.parametrize("setup, overrides, message", [
    (lambda t: None, ["dataset.root={t}/nowhere"], "does not exist"),
    (lambda t: (t / "file.png").write_bytes(b"x"), ["dataset.root={t}/file.png"], "is a file, not a folder"),
    (lambda t: (t / "empty").mkdir(), ["dataset.root={t}/empty"], "holds no class folders"),
    (lambda t: (write_tree(t / "p"), (t / "p" / "dog").mkdir()), ["dataset.root={t}/p"],
     "the class folder {t}/p/dog holds no images"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.skip_bad=false"],
     "{t}/p/bee/broken.png is not a readable image"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.resize=null"],
     "but the model takes 20x16 images and its dataset has no resize policy"),
    (lambda t: (write_tree(t / "p"), (t / "f").write_text("")), ["dataset.root={t}/p", "dataset.cache_dir={t}/f/c"],
     "dataset.cache_dir={t}/f/c cannot be written"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.val_size=1.5"], "val_size=1.5: give a count"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.resize=zoom"], "dataset.resize=zoom: choose"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.input_shape=[4,8,8]"], "C=1 (greyscale) or C=3"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.input_shape=[3,0,8]"], "[3, 0, 8]: images are"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.test_size=abc"], "e.g. dataset.test_size=0.1"),
    (lambda t: write_tree(t / "p"), ["dataset.root={t}/p", "dataset.test_size=40"], "leaves no training images"),
])
def test_bad_input_is_one_line_and_leaves_no_cache(tmp_path: Path, setup, overrides, message) -> None:
    setup(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError) as err:
        data.resolve(dataset(tmp_path, *[o.format(t=tmp_path) for o in overrides]))
    assert message.format(t=tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob(".*.tmp"))
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("override, message", [
    ("dataset.num_classes=null", "dataset.num_classes=null: give it (only dataset=imagefolder"),
    ("dataset.workers=2", "dataset.workers is only for dataset=imagefolder"),
    ("dataset.resize=pad", "dataset.resize is only for dataset=imagefolder"),
    ("dataset.val_size=0.5", "dataset.val_size=0.5 must be a count of images"),
])
def test_imagefolder_settings_on_another_dataset_are_refused(override: str, message: str) -> None:
    cfg = compose("train", "dataset=mnist_sample", override).dataset
    with pytest.raises(UserError, match=re.escape(message)):
        data.load(cfg)


@pytest.mark.e2e
def test_cnn_train_on_a_folder_alone_then_reuses_the_cache_and_resumes_exactly(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "pics")
    args = ["model=lenet5", "trainer.epochs=2", "trainer.batch_size=4", "trainer.progress=false",
            "trainer.deterministic=true", "dataset.max_memory_gb=0"]  # the mapped mode, which must resume exactly
    first = cnn("cnn-train", "dataset=imagefolder", f"dataset.root={tree}", *args, "hydra.run.dir=full", cwd=tmp_path)
    assert "image cache written" in first.stdout
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["skipped_files"] == 1 and metrics["dataset"] == "imagefolder"
    stored = checkpoint.load(tmp_path / "full" / "checkpoints" / "best.pt")["config"]["dataset"]
    assert stored["classes"] == CLASSES and stored["input_shape"] == [3, 16, 20] and len(stored["mean"]) == 3

    cut = tmp_path / "cut"
    proc = subprocess.Popen([str(BIN / "cnn-train"), "dataset=imagefolder", f"dataset.root={tree}", *args,
                             f"hydra.run.dir={cut}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    for line in proc.stdout:
        output.append(line)
        if "epoch 1/2 " in line:
            proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, "".join(output)
    assert "image cache reused" in "".join(output)
    cnn("cnn-train", f"resume={cut}", cwd=tmp_path)
    full = checkpoint.load(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    resumed = checkpoint.load(cut / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)

    # cnn-predict resizes as training did: a 24x24 image of the brightest class
    predicted = cnn("cnn-predict", f"checkpoint={cut}/checkpoints/best.pt", f"inputs=[{tree}/cow/02.png]",
                    cwd=tmp_path)
    assert predicted.stdout.split("\t")[1] == "cow"

    # cnn-eval finds the same test split in the tree it is given (and only there)
    report = run_eval(compose("eval", f"checkpoint={cut}/checkpoints/best.pt", f"root={tree}"))
    assert report["accuracy"] == json.loads((cut / "metrics.json").read_text())["test_acc"]
    with pytest.raises(UserError, match="give it with root=DIR"):
        run_eval(compose("eval", f"checkpoint={cut}/checkpoints/best.pt"))
