"""cnn_cli.data: real torchvision parsing of small dataset files written here, the
train/val split, batches, augmentation, normalisation, the offline fallback, and how
cnn-train reports missing or broken data.

Every image written here encodes its own index in its first pixels, so a test can tell
exactly which samples ended up in which split or batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from cnn_cli import data, sources
from cnn_cli.errors import UserError
from helpers import MNIST_FILES, cnn, compose, mnist_images, tiny, write_idx


N_TRAIN, N_TEST, VAL = 300, 50, 60  # write_idx's default sizes, and a validation split


# ------------------------------------------------------------------------- helpers


def compose_dataset(*overrides: str):
    return compose("train", *overrides).dataset


def ident(images: torch.Tensor) -> torch.Tensor:
    """The index a written image encodes (images: N x C x H x W uint8)."""
    return images[:, 0, 0, 0].long() * 256 + images[:, 0, 0, 1].long()


def cifar_rows(n: int, start: int) -> np.ndarray:
    """(n, 3072) uint8 in CIFAR's row layout: 1024 red, then 1024 green, then 1024 blue values
    (each row-major 32 x 32). Index start+i is in red pixels 0 and 1; each channel has its own
    constant offset so the channel order is visible."""
    rng = np.random.default_rng(start)
    rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    idx = np.arange(start, start + n)
    rows[:, 0], rows[:, 1] = idx // 256, idx % 256
    rows[:, 2], rows[:, 1024 + 2], rows[:, 2048 + 2] = 11, 22, 33  # R, G, B of pixel (0, 2)
    return rows


def write_cifar(folder: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # torchvision unpickles with encoding="latin1", which turns the Python 2 str keys of the
    # real files into str; str keys written from Python 3 are what it then sees.
    for i in range(5):
        start = i * per_batch
        batch = {"data": cifar_rows(per_batch, start), "labels": [j % 10 for j in range(start, start + per_batch)],
                 "batch_label": f"training batch {i + 1} of 5"}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {"data": cifar_rows(n_test, 1000), "labels": [j % 10 for j in range(n_test)],
            "batch_label": "testing batch 1 of 1"}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def trust_written_cifar(monkeypatch: pytest.MonkeyPatch, folder: Path, keep_real: tuple[str, ...] = ()) -> None:
    """torchvision checks every CIFAR file against the md5 of the real download, hard-coded
    in torchvision.datasets.CIFAR10. These are torchvision's expected checksums, not our
    code: point them at the files written here (except those in keep_real, which keep
    torchvision's real md5 and so must fail its check)."""
    cls = datasets.CIFAR10
    real = {name: value for name, value in cls.train_list + cls.test_list}
    real[cls.meta["filename"]] = cls.meta["md5"]
    expect = lambda name: real[name] if name in keep_real else md5(folder / name)  # noqa: E731
    monkeypatch.setattr(cls, "train_list", [[name, expect(name)] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, expect(name)] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": expect(cls.meta["filename"])})


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mnist")
    write_idx(root / "MNIST" / "raw")
    return root


@pytest.fixture(scope="module")
def mnist(mnist_root: Path) -> data.Data:
    return data.load(compose_dataset("dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false",
                                     f"dataset.val_size={VAL}"))


@pytest.fixture(scope="module")
def sample() -> data.Data:
    return data.load(compose_dataset("dataset=mnist_sample"))


# ------------------------------------------------------------------------- reading and splitting


def test_mnist_split_sizes_types_and_shapes(mnist: data.Data) -> None:
    assert mnist.name == "mnist"
    assert (len(mnist.train), len(mnist.val), len(mnist.test)) == (N_TRAIN - VAL, VAL, N_TEST)
    for split, n in ((mnist.train, N_TRAIN - VAL), (mnist.val, VAL), (mnist.test, N_TEST)):
        assert split.images.dtype == torch.uint8 and tuple(split.images.shape) == (n, 1, 28, 28)
        assert split.labels.dtype == torch.int64 and tuple(split.labels.shape) == (n,)
    assert mnist.mean.shape == mnist.std.shape == (1,)
    assert mnist.mean.item() == pytest.approx(0.1307) and mnist.std.item() == pytest.approx(0.3081)


def test_mnist_train_and_val_partition_the_training_file(mnist: data.Data) -> None:
    train_ids, val_ids = ident(mnist.train.images), ident(mnist.val.images)
    assert not set(train_ids.tolist()) & set(val_ids.tolist())
    assert sorted(train_ids.tolist() + val_ids.tolist()) == list(range(N_TRAIN))
    for split, ids in ((mnist.train, train_ids), (mnist.val, val_ids)):
        assert (split.images[:, 0, 0, 2] == 0).all()  # all from the training file
        assert torch.equal(split.labels, ids % 10)  # each image still carries its own label
        expected = torch.from_numpy(mnist_images(N_TRAIN, False))[ids].unsqueeze(1)
        assert torch.equal(split.images, expected)  # whole images, byte for byte


def test_mnist_test_split_is_the_test_file_untouched(mnist: data.Data) -> None:
    assert torch.equal(mnist.test.images, torch.from_numpy(mnist_images(N_TEST, True)).unsqueeze(1))
    assert torch.equal(mnist.test.labels, torch.arange(N_TEST) % 10)


def test_split_depends_only_on_split_seed(mnist_root: Path, mnist: data.Data) -> None:
    base = ["dataset=mnist", f"dataset.root={mnist_root}", "dataset.download=false", f"dataset.val_size={VAL}"]
    again = data.load(compose_dataset(*base, "dataset.split_seed=0"))
    other = data.load(compose_dataset(*base, "dataset.split_seed=1"))
    assert torch.equal(ident(again.val.images), ident(mnist.val.images))
    assert torch.equal(again.train.images, mnist.train.images)
    assert not torch.equal(ident(other.val.images), ident(mnist.val.images))
    assert len(other.val) == VAL and torch.equal(other.test.images, mnist.test.images)


def test_fashion_mnist_reads_the_same_idx_layout(tmp_path: Path) -> None:
    write_idx(tmp_path / "FashionMNIST" / "raw", n_train=120, n_test=30)
    loaded = data.load(compose_dataset("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false",
                                       "dataset.val_size=20"))
    assert loaded.name == "fashion_mnist"
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (100, 20, 30)
    assert tuple(loaded.train.images.shape) == (100, 1, 28, 28) and loaded.train.images.dtype == torch.uint8
    assert sorted(ident(loaded.train.images).tolist() + ident(loaded.val.images).tolist()) == list(range(120))
    assert loaded.mean.item() == pytest.approx(0.2860)


def test_cifar10_batches_keep_channel_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    trust_written_cifar(monkeypatch, folder)
    loaded = data.load(compose_dataset("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                                       "dataset.val_size=10"))
    assert loaded.name == "cifar10"
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (90, 10, 20)
    assert tuple(loaded.train.images.shape) == (90, 3, 32, 32) and loaded.train.images.dtype == torch.uint8
    assert loaded.train.labels.dtype == torch.int64 and loaded.mean.shape == (3,)
    # pixel (0, 2): red 11, green 22, blue 33, as written
    assert loaded.train.images[:, :, 0, 2].tolist() == [[11, 22, 33]] * 90
    # every image is its row, reshaped channel-major: value [c, y, x] = row[c * 1024 + y * 32 + x]
    rows = np.concatenate([cifar_rows(20, i * 20) for i in range(5)])
    ids = ident(loaded.train.images)
    assert torch.equal(loaded.train.images, torch.from_numpy(rows).view(-1, 3, 32, 32)[ids])
    assert torch.equal(loaded.train.labels, ids % 10)
    assert sorted(ids.tolist() + ident(loaded.val.images).tolist()) == list(range(100))
    assert torch.equal(loaded.test.images, torch.from_numpy(cifar_rows(20, 1000)).view(-1, 3, 32, 32))
    # a hand-picked pixel: green channel, row 5, column 7 of the first test image
    assert loaded.test.images[0, 1, 5, 7].item() == cifar_rows(20, 1000)[0, 1024 + 5 * 32 + 7]


def test_cifar10_checksum_mismatch_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    trust_written_cifar(monkeypatch, folder, keep_real=("data_batch_3",))
    cfg = compose_dataset("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                          "dataset.val_size=10")
    with pytest.raises(UserError) as err:
        data.load(cfg)
    message = str(err.value)
    assert str(folder / "data_batch_3") in message and "truncated or corrupted" in message
    assert "data_batch_1" not in message and "test_batch" not in message


# ------------------------------------------------------------------------- batches


def test_epoch_plan_is_a_function_of_seed_and_epoch() -> None:
    a, b = data.epoch_plan(500, seed=3, epoch=2, crop_padding=4, flip=True), data.epoch_plan(500, 3, 2, 4, True)
    assert torch.equal(a.order, b.order) and torch.equal(a.offsets, b.offsets) and torch.equal(a.flips, b.flips)
    assert sorted(a.order.tolist()) == list(range(500))
    assert not torch.equal(data.epoch_plan(500, 3, 3).order, a.order)
    assert not torch.equal(data.epoch_plan(500, 4, 2).order, a.order)
    assert int(a.offsets.min()) == 0 and int(a.offsets.max()) == 8 and a.offsets.shape == (500, 2)
    assert 150 < int(a.flips.sum()) < 350
    plain = data.epoch_plan(500, 3, 2)
    assert plain.offsets is None and plain.flips is None


def test_train_batches_are_normalised_full_batches_in_plan_order(mnist: data.Data) -> None:
    plan = data.epoch_plan(len(mnist.train), seed=0, epoch=0)
    batches = list(data.train_batches(mnist, 64, plan))
    assert len(batches) == data.num_train_batches(240, 64) == 3  # 240 training images: the last 48 are dropped
    for b, (images, labels) in enumerate(batches):
        assert images.dtype == torch.float32 and tuple(images.shape) == (64, 1, 28, 28)
        idx = plan.order[b * 64:(b + 1) * 64]
        raw = mnist.train.images[idx].double()
        expected = (raw / 255 - 0.1307) / 0.3081
        torch.testing.assert_close(images.double(), expected, rtol=0, atol=1e-5)
        assert torch.equal(labels, mnist.train.labels[idx])
    seen = torch.cat([ident(mnist.train.images[plan.order[b * 64:(b + 1) * 64]]) for b in range(3)])
    assert len(set(seen.tolist())) == 192
    # start/stop pick out the same batches a full pass gives
    middle = list(data.train_batches(mnist, 64, plan, start=1, stop=2))
    assert len(middle) == 1 and torch.equal(middle[0][0], batches[1][0])


def test_eval_batches_cover_every_sample_once_including_the_last_partial_batch(mnist: data.Data) -> None:
    batches = list(data.eval_batches(mnist, mnist.val, 25))
    assert [len(labels) for _, labels in batches] == [25, 25, 10]
    assert torch.equal(torch.cat([labels for _, labels in batches]), mnist.val.labels)
    images = torch.cat([images for images, _ in batches])
    assert images.dtype == torch.float32 and len(images) == len(mnist.val) == VAL
    torch.testing.assert_close(images, data.normalize(mnist.val.images, mnist.mean, mnist.std))
    assert len(list(data.eval_batches(mnist, mnist.test, 1000))) == 1
    assert [len(y) for _, y in data.eval_batches(mnist, mnist.val, 25, limit=2)] == [25, 25]


# ------------------------------------------------------------------------- augmentation


def reference_crop(images: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    n, c, h, w = images.shape
    padded = torch.zeros(n, c, h + 2 * pad, w + 2 * pad, dtype=images.dtype)
    padded[:, :, pad:pad + h, pad:pad + w] = images
    out = torch.empty_like(images)
    for i in range(n):
        r, q = offsets[i].tolist()
        out[i] = padded[i, :, r:r + h, q:q + w]
    return out


def test_random_crop_cuts_each_zero_padded_image_at_its_offset() -> None:
    gen = torch.Generator().manual_seed(0)
    pad = 3
    images = torch.randint(1, 256, (20, 3, 8, 11), generator=gen, dtype=torch.uint8)  # not square, no zeros
    offsets = torch.randint(0, 2 * pad + 1, (20, 2), generator=gen)
    offsets[:4] = torch.tensor([[0, 0], [2 * pad, 2 * pad], [0, 2 * pad], [2 * pad, 0]])  # the extremes
    offsets[4] = torch.tensor([pad, pad])  # centred: the image itself
    out = data.random_crop(images, offsets, pad)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, reference_crop(images, offsets, pad))
    assert torch.equal(out[4], images[4])
    # offset (0, 0) shows the padding at the top-left, (2p, 2p) at the bottom-right
    assert (out[0, :, :pad, :] == 0).all() and (out[0, :, :, :pad] == 0).all()
    assert torch.equal(out[0, :, pad:, pad:], images[0, :, :-pad, :-pad])
    assert (out[1, :, -pad:, :] == 0).all() and (out[1, :, :, -pad:] == 0).all()
    assert torch.equal(out[1, :, :-pad, :-pad], images[1, :, pad:, pad:])


def test_flip_where_mirrors_exactly_the_masked_images() -> None:
    images = torch.randint(0, 256, (10, 3, 5, 7), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    mask = torch.tensor([True, False, False, True, True, False, True, False, False, False])
    out = data.flip_where(images, mask)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(10):
        assert torch.equal(out[i], images[i].flip(-1) if mask[i] else images[i])
    assert torch.equal(out[0, :, :, 0], images[0, :, :, -1])


def test_train_batches_with_cifar_augmentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cifar(tmp_path / "cifar-10-batches-py")
    trust_written_cifar(monkeypatch, folder)
    cfg = compose_dataset("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                          "dataset.val_size=10")
    assert cfg.augment.crop_padding == 4 and cfg.augment.flip
    loaded = data.load(cfg)
    plan = data.epoch_plan(len(loaded.train), 0, 0, cfg.augment.crop_padding, cfg.augment.flip)
    batches = list(data.train_batches(loaded, 16, plan, cfg.augment.crop_padding))
    assert len(batches) == 90 // 16
    for b, (images, labels) in enumerate(batches):
        assert tuple(images.shape) == (16, 3, 32, 32) and images.dtype == torch.float32
        pos = slice(b * 16, (b + 1) * 16)
        raw = loaded.train.images[plan.order[pos]]
        cropped = reference_crop(raw, plan.offsets[pos], 4)
        flipped = torch.stack([x.flip(-1) if f else x for x, f in zip(cropped, plan.flips[pos])])
        torch.testing.assert_close(images, data.normalize(flipped, loaded.mean, loaded.std))
        assert torch.equal(labels, loaded.train.labels[plan.order[pos]])


# ------------------------------------------------------------------------- normalisation and the sample


def test_bundled_sample_sizes_and_name(sample: data.Data) -> None:
    assert sample.name == "mnist_sample"
    assert (len(sample.train), len(sample.val), len(sample.test)) == (3500, 500, 1000)
    assert tuple(sample.train.images.shape) == (3500, 1, 28, 28) and sample.train.images.dtype == torch.uint8
    for split in (sample.train, sample.val, sample.test):
        assert split.labels.dtype == torch.int64 and set(split.labels.tolist()) == set(range(10))


def test_normalised_training_epoch_has_zero_mean_unit_std(sample: data.Data) -> None:
    plan = data.epoch_plan(len(sample.train), seed=0, epoch=0)
    images = torch.cat([x for x, _ in data.train_batches(sample, 500, plan)])
    assert len(images) == 3500
    assert abs(images.mean().item()) < 0.02
    assert abs(images.std().item() - 1) < 0.02


def test_random_dataset_has_the_asked_shape_sizes_and_is_the_same_every_time() -> None:
    overrides = ("dataset=random", "dataset.input_shape=[3,12,10]", "dataset.num_images=[300,40]",
                 "dataset.val_size=20")
    loaded, again = data.load(compose_dataset(*overrides)), data.load(compose_dataset(*overrides))
    assert loaded.name == "random"
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (280, 20, 40)
    assert tuple(loaded.train.images.shape) == (280, 3, 12, 10) and loaded.train.images.dtype == torch.uint8
    assert set(loaded.test.labels.tolist()) <= set(range(10)) and len(set(loaded.train.labels.tolist())) == 10
    assert loaded.train.images.float().std() > 60  # noise over the whole 0..255 range, not a constant
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(loaded, split).images, getattr(again, split).images)
        assert torch.equal(getattr(loaded, split).labels, getattr(again, split).labels)


# ------------------------------------------------------------------------- offline fallback (in-process)


def test_missing_mnist_falls_back_to_the_sample_with_a_warning(tmp_path: Path, caplog) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    cfg = compose_dataset("dataset=mnist", f"dataset.root={root}", "dataset.download=false")
    with caplog.at_level(logging.WARNING, logger="cnn_cli.sources"):
        loaded = data.load(cfg)
    assert loaded.name == sources.FALLBACK_NAME == "mnist_sample (fallback)"
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (3500, 500, 1000)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "cnn_cli.sources"]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert str(root.resolve() / "MNIST" / "raw") in text
    assert "mnist_sample (fallback)" in text and "sample" in text and "dataset.fallback=false" in text


def test_missing_mnist_without_fallback_is_an_error_naming_folder_and_files(tmp_path: Path) -> None:
    cfg = compose_dataset("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false",
                          "dataset.fallback=false")
    with pytest.raises(UserError) as err:
        data.load(cfg)
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    for name in MNIST_FILES:
        assert name in message
    assert "dataset.download=true" in message


def test_labels_and_images_that_do_not_pair_up_are_an_error(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "MNIST" / "raw")
    labels = (np.arange(N_TRAIN + 100) % 10).astype(np.uint8)  # more labels than images
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, N_TRAIN + 100) + labels.tobytes())
    cfg = compose_dataset("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false", "dataset.val_size=10")
    with pytest.raises(UserError, match=f"hold {N_TRAIN} images but {N_TRAIN + 100} labels"):
        data.load(cfg)


def test_an_images_file_under_a_labels_name_is_named(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "MNIST" / "raw")
    (raw / "train-labels-idx1-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes())
    cfg = compose_dataset("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError, match="train-labels-idx1-ubyte is truncated or corrupted"):
        data.load(cfg)


def test_only_mnist_falls_back_to_the_mnist_sample(tmp_path: Path) -> None:
    cfg = compose_dataset("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false",
                          "dataset.fallback=true")
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        data.load(cfg)


# ------------------------------------------------------------------------- cnn-train in its own process
# (missing or broken files that cnn-train refuses are cases of test_bad_input.py's catalogue)


@pytest.mark.e2e
def test_cli_missing_mnist_trains_on_the_fallback_sample(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = cnn("cnn-train", *tiny("dataset=mnist", f"dataset.root={tmp_path / 'empty'}", "dataset.download=false"),
               f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "could not be found or downloaded" in output
    assert str((tmp_path / "empty" / "MNIST" / "raw").resolve()) in output and "mnist_sample (fallback)" in output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "mnist_sample (fallback)"
    assert metrics["steps"] == 2


@pytest.mark.parametrize("override, message", [
    ("dataset.std=[0.2,0.3]", "one value per channel"),
    ("dataset.classes=[a,b]", "names 2 classes but dataset.num_classes is 10"),
    ("dataset.root=null", "dataset.root is empty"),
])
def test_dataset_config_mistakes_are_named_before_loading(override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        data.load(compose_dataset("dataset=mnist", override))
