"""Dataset sources (cnn_cli/sources.py): each run resolves its source once, an image folder's
tree is walked once, and dataset=arrays reads a user's numpy arrays, refusing hostile ones."""

from __future__ import annotations

import io
import os
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from cnn_cli import contract, data, imagefolder, schema, train
from cnn_cli.errors import UserError
from cnn_cli.evaluate import run_eval
from cnn_cli.export import run_export
from helpers import ONE_THREAD, cnn, compose, one_error_line


def small_tree(root: Path) -> Path:
    for c, name in enumerate(("ant", "bee")):
        (root / name / "deep").mkdir(parents=True)
        for i in range(4):
            Image.new("L", (8, 8), 40 + 60 * c + i).save(root / name / ("deep" if i % 2 else "") / f"{i}.png")
    return root


def test_an_image_folder_run_walks_its_tree_once_and_stats_each_file_once(tmp_path: Path, monkeypatch) -> None:
    root = small_tree(tmp_path / "pics")
    files = {str(p) for p in root.rglob("*.png")}
    folders = {str(p) for p in root.rglob("*") if p.is_dir() and ".cnn-cache" not in p.parts} | {str(root)}
    listed, stats = Counter(), Counter()
    scandir, listdir, stat = os.scandir, os.listdir, os.stat

    def counting(real, counter):
        def wrapper(path=".", *args, **kwargs):
            counter[os.fspath(path)] += 1
            return real(path, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(imagefolder, "_OPENED", {})  # as a new process
    monkeypatch.setattr(os, "scandir", counting(scandir, listed))
    monkeypatch.setattr(os, "listdir", counting(listdir, listed))
    monkeypatch.setattr(os, "stat", counting(stat, stats))
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1", "dataset.val_size=2",
                   "dataset.test_size=2", "model=lenet5", "trainer.device=cpu")
    train.prepare(cfg, tmp_path / "run", [])
    walks = {folder: listed[folder] for folder in folders}
    file_stats = {file: stats[file] for file in files}
    print("walks", walks, "stats", file_stats)
    assert set(walks.values()) == {1}, walks
    assert set(file_stats.values()) == {1}, file_stats


def test_the_schema_check_reads_no_file_and_summary_resolves_like_train(tmp_path: Path) -> None:
    cfg = compose("train", "dataset=imagefolder", f"dataset.root={tmp_path / 'nowhere'}")
    schema.check(cfg)  # pure: the missing folder is the dataset's to find, when a run resolves it
    assert cfg.dataset.input_shape is None
    with pytest.raises(UserError, match="does not exist"):
        data.resolve(cfg.dataset)
    with pytest.raises(UserError, match=r"dataset.source 'MNIST2' is not one of MNIST, FashionMNIST, .*, arrays"):
        data.check(compose("train", "dataset.source=MNIST2").dataset)


# ---------------------------------------------------------------------------- dataset=arrays


def readings(n: int, rng: np.random.Generator, shape=(3, 20)) -> tuple[np.ndarray, np.ndarray]:
    """Float sensor windows whose class sets the level of channel 0: learnable, and not normalised."""
    y = np.arange(n) % 3
    x = rng.normal(5.0, 2.0, (n, *shape)).astype(np.float32)
    x[:, 0] += 4 * y.reshape(-1, *[1] * (len(shape) - 1))
    return x, y.astype(np.int16)


def arrays_cfg(root: Path, *overrides: str):
    return compose("train", "dataset=arrays", f"dataset.root={root}", *overrides)


def test_logged_sensor_windows_in_an_npz_train_with_shape_classes_and_normalisation_read_off_them(
        tmp_path: Path) -> None:
    x, y = readings(60, np.random.default_rng(0))
    np.savez_compressed(tmp_path / "imu.npz", x_train=x, y_train=y)
    cfg = arrays_cfg(tmp_path / "imu.npz", "model=imu_cnn1d", "trainer.device=cpu", "trainer.epochs=1",
                     "trainer.batch_size=16", "trainer.progress=false")
    run = train.prepare(cfg, tmp_path / "run", [])
    dataset = run.cfg.dataset
    assert (list(dataset.input_shape), dataset.samples, dataset.num_classes) == ([3, 20], "float32", 3)
    assert list(dataset.classes) == ["0", "1", "2"]
    assert (len(run.data.train), len(run.data.val), len(run.data.test)) == (49, 6, 5)  # a tenth of 60, then of 54
    assert run.data.train.images.dtype == torch.float32 and run.data.train.labels.dtype == torch.int64
    kept = run.data.train.images.numpy()  # the statistics are the training split's, per channel
    np.testing.assert_allclose(dataset.mean, kept.mean(axis=(0, 2)), atol=1e-5)
    np.testing.assert_allclose(dataset.std, kept.std(axis=(0, 2)), atol=1e-5)
    assert contract.of(dataset)["samples"] == "float32" and contract.of(dataset)["color"] is None
    train.train(run)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    eval_cfg = compose("eval", f"checkpoint={best}", f"root={tmp_path / 'imu.npz'}")
    nowhere = compose("eval", f"checkpoint={best}")
    report = run_eval(eval_cfg)  # the same arrays, so the same split: the run's own test set and number
    assert report["test_set"]["count"] == 5 and report["accuracy"] == report["recorded_accuracy"]
    with pytest.raises(UserError, match=r"the run trained on numpy arrays: give them with root=FILE.npz or DIR"):
        run_eval(nowhere)
    exported = run_export(OmegaConf.create({"checkpoint": str(best), "format": "torchscript", "output": None,
                                            "fuse_bn": True, "preprocess": True, "any_size": False, "opset": None,
                                            "root": str(tmp_path / "imu.npz"), "verify_inputs": None}))
    assert exported["verified_on"] == "5 test images of root=" + str(tmp_path / "imu.npz")


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 4, 6, 6)])
def test_uint8_images_and_volumes_in_a_folder_of_npy_keep_the_given_splits(tmp_path: Path, shape) -> None:
    rng = np.random.default_rng(1)
    for split, n in (("train", 20), ("val", 4), ("test", 6)):
        np.save(tmp_path / f"x_{split}.npy", rng.integers(0, 256, (n, *shape), dtype=np.uint8))
        np.save(tmp_path / f"y_{split}.npy", np.arange(n) % 2)
    cfg = arrays_cfg(tmp_path).dataset
    loaded = data.load(cfg)
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (20, 4, 6)
    assert torch.equal(loaded.test.images, torch.from_numpy(np.load(tmp_path / "x_test.npy")))
    assert list(cfg.input_shape) == list(shape) and cfg.samples == "uint8"
    pixels = np.load(tmp_path / "x_train.npy") / 255
    assert cfg.mean == pytest.approx([pixels.mean()], abs=1e-5) and cfg.std == pytest.approx([pixels.std()], abs=1e-5)
    assert contract.of(cfg)["samples"] == "uint8"


def test_given_settings_must_agree_with_the_arrays(tmp_path: Path) -> None:
    x, y = readings(30, np.random.default_rng(0))
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y)
    cfg = arrays_cfg(tmp_path / "a.npz", "dataset.num_classes=5", "dataset.mean=[0,0,0]", "dataset.std=[1,1,1]")
    data.resolve(cfg.dataset)
    assert cfg.dataset.num_classes == 5 and list(cfg.dataset.mean) == [0, 0, 0]  # given values stay
    for override, says in (("dataset.input_shape=[3,21]", r"input_shape=\[3, 21\] but the arrays' is \[3, 20\]"),
                           ("dataset.samples=uint8", "dataset.samples=uint8 but the arrays' is float32"),
                           ("dataset.num_classes=2", "the labels run up to 2, but there are 2 classes"),
                           ("dataset.classes=[a,b]", "the labels run up to 2, but there are 2 classes"),
                           ("dataset.samples=int8", "dataset.samples=int8: choose uint8"),
                           ("dataset.val_size=1.5", r"dataset.val_size=1.5: give a count of samples")):
        with pytest.raises(UserError, match=says):
            data.resolve(arrays_cfg(tmp_path / "a.npz", override).dataset)


def bomb(path: Path) -> None:
    """An .npz of a few hundred bytes whose x_train header claims 10 TB."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**9, 1, 100, 100)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x_train.npy", header.getvalue() + bytes(1000))
        archive.writestr("y_train.npy", npy(np.zeros(3, dtype=np.int64)))


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def hostile(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "a.npz", **arrays)
    return tmp_path / "a.npz"


X = np.zeros((6, 1, 4, 4), dtype=np.uint8)
Y = np.arange(6) % 2


def pickled(tmp_path: Path) -> Path:
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
        archive.writestr("x_train.npy", npy(np.array([object()] * 6, dtype=object), allow_pickle=True))
        archive.writestr("y_train.npy", npy(Y))
    return tmp_path / "a.npz"


def linked(tmp_path: Path) -> Path:
    real = hostile(tmp_path, x_train=X, y_train=Y)
    (tmp_path / "link.npz").symlink_to(real)
    return tmp_path / "link.npz"


def fifo_in_folder(tmp_path: Path) -> Path:
    np.save(tmp_path / "y_train.npy", Y)
    os.mkfifo(tmp_path / "x_train.npy")
    return tmp_path


def link_in_folder(tmp_path: Path) -> Path:
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "y.npy", Y)
    np.save(tmp_path / "d" / "x_train.npy", X)
    (tmp_path / "d" / "y_train.npy").symlink_to(tmp_path / "y.npy")
    return tmp_path / "d"


def one_npy(tmp_path: Path) -> Path:
    np.save(tmp_path / "x_train.npy", X)
    return tmp_path / "x_train.npy"


def not_a_zip(tmp_path: Path) -> Path:
    (tmp_path / "a.npz").write_text("x_train,y_train\n1,2\n")
    return tmp_path / "a.npz"


def truncated(tmp_path: Path) -> Path:
    with zipfile.ZipFile(tmp_path / "a.npz", "w") as archive:
        archive.writestr("x_train.npy", npy(X)[:-10])
        archive.writestr("y_train.npy", npy(Y))
    return tmp_path / "a.npz"


def the_bomb(tmp_path: Path) -> Path:
    bomb(tmp_path / "a.npz")
    return tmp_path / "a.npz"


NAN = np.zeros((6, 2, 5), dtype=np.float32)
NAN[3, 1, 2] = np.nan
INF = np.zeros((6, 2, 5), dtype=np.float64)
INF[4, 0, 0] = 1e300  # finite in float64, inf as the float32 the samples are kept in

HOSTILE = {
    "object_array": (pickled, r"x_train holds Python objects or records \(object\), which are never unpickled"),
    "records": (lambda t: hostile(t, x_train=np.zeros(6, dtype=[("a", "f4")]), y_train=Y), "objects or records"),
    "zip_bomb": (the_bomb, r"x_train needs 10000.0 GB of memory, more than the .* free on this machine"),
    "truncated": (truncated, r"x_train is truncated or damaged \(.*\); save it again"),
    "length_mismatch": (lambda t: hostile(t, x_train=X, y_train=Y[:5]), "x_train holds 6 samples but y_train 5 labels"),
    "float_labels": (lambda t: hostile(t, x_train=X, y_train=Y.astype(float)),
                     r"y_train holds float64 values; labels are class indices .*y_train.astype\(np.int64\)"),
    "bool_labels": (lambda t: hostile(t, x_train=X, y_train=Y.astype(bool)), "y_train holds bool values"),
    "complex_samples": (lambda t: hostile(t, x_train=X.astype(complex), y_train=Y), "x_train holds complex128 values"),
    "bool_samples": (lambda t: hostile(t, x_train=X.astype(bool), y_train=Y), "x_train holds bool values"),
    "int16_samples": (lambda t: hostile(t, x_train=X.astype(np.int16), y_train=Y),
                      r"x_train holds int16 values; samples are uint8 pixels .* x_train.astype\(np.float32\)"),
    "nan_readings": (lambda t: hostile(t, x_train=NAN, y_train=Y), r"x_train holds NaN or infinite readings \(first "
                                                                   r"in sample 3; 1 samples in all\)"),
    "overflowing_readings": (lambda t: hostile(t, x_train=INF, y_train=Y), "first in sample 4"),
    "negative_labels": (lambda t: hostile(t, x_train=X, y_train=Y - 1), r"the labels run from -1; .*y - y.min\(\)"),
    "huge_labels": (lambda t: hostile(t, x_train=X, y_train=Y * 10**12), "the labels run up to 1000000000000, but "
                                                                         "there are 1000000000001 classes"),
    "missing_labels": (lambda t: hostile(t, x_train=X), r"a.npz has no y_train \(it holds x_train\)"),
    "missing_samples": (lambda t: hostile(t, X_train=X, Y_train=Y), "a.npz holds X_train, Y_train, which nothing "
                                                                    "reads; name the arrays x_train, y_train"),
    "misspelt_split": (lambda t: hostile(t, x_train=X, y_train=Y, x_valid=X, y_valid=Y), "holds x_valid, y_valid"),
    "samples_without_labels": (lambda t: hostile(t, x_train=X, y_train=Y, x_test=X),
                               "x_test is given but y_test is not; give both"),
    "table_not_samples": (lambda t: hostile(t, x_train=np.zeros((6, 5), np.float32), y_train=Y),
                          r"x_train has shape 6 x 5; give N samples with the channels first.*x_train\[:, None\]"),
    "column_of_labels": (lambda t: hostile(t, x_train=X, y_train=Y[:, None]),
                         r"y_train has shape 6 x 1; give one label per sample \(N,\), e.g. y_train.ravel\(\)"),
    "empty": (lambda t: hostile(t, x_train=X[:0], y_train=Y[:0]), "x_train has shape 0 x 1 x 4 x 4, which holds no "
                                                                  "samples; give some$"),
    "empty_val": (lambda t: hostile(t, x_train=X, y_train=Y, x_val=X[:0], y_val=Y[:0]), "or leave x_val out"),
    "other_split_shape": (lambda t: hostile(t, x_train=X, y_train=Y, x_val=X[:, :, :3], y_val=Y),
                          "x_val holds 1 x 3 x 4 uint8 samples but x_train 1 x 4 x 4 uint8"),
    "symlink": (linked, r"link.npz is a symbolic link; give the file itself"),
    "fifo": (fifo_in_folder, "x_train.npy is not a regular file"),
    "symlink_in_folder": (link_in_folder, "y_train.npy is a symbolic link"),
    "one_npy": (one_npy, "is one .npy array; give the folder that holds x_train.npy"),
    "not_a_zip": (not_a_zip, r"is not an .npz file \(as np.savez\(FILE, x_train=x, y_train=y\) writes\)"),
    "missing": (lambda t: t / "nowhere.npz", "nowhere.npz does not exist; give your arrays"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_and_careless_arrays_are_one_line_naming_the_key_and_the_fix(tmp_path: Path, case: str) -> None:
    make, says = HOSTILE[case]
    root = make(tmp_path)
    cfg = arrays_cfg(root).dataset
    with pytest.raises(UserError, match=says) as err:
        data.resolve(cfg)
    assert str(err.value).startswith(f"dataset.root={root}") and "\n" not in str(err.value)


@pytest.mark.e2e
def test_cnn_train_on_a_pickled_npz_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = cnn("cnn-train", "dataset=arrays", f"dataset.root={pickled(tmp_path)}", "model=mlp", cwd=tmp_path,
               env=ONE_THREAD, check=False)
    assert "never unpickled" in one_error_line(proc)
    assert not list((tmp_path / "outputs").rglob("*.pt"))
