"""Every benchmark in benchmarks/ runs to its end with tiny arguments, so none breaks unseen
between the rare times someone measures with it. Each is started as a user starts it, on
MNIST files of a few hundred digits that the test writes (torchvision's layout)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from helpers import BIN, ONE_THREAD, NO_GPU, user_env, write_idx

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

# each benchmark's tiny arguments; {root} is the folder holding MNIST/raw, {tmp} a fresh folder
TINY_ARGS = {
    "data_pipeline.py": ["dataset=mnist", "dataset.root={root}", "dataset.val_size=100", "trainer.batch_size=8"],
    "imagefolder.py": ["--images", "40", "--tree", "{tmp}/tree", "--epochs", "2"],
    "inference.py": ["--repeats", "3", "--threads", "1"],
    "mnist_plain.py": ["--root", "{root}", "--steps", "2"],
    "memory_format.py": ["--steps", "1", "--batch-size", "2", "--repeats", "1"],
    "scaling.py": ["--root", "{root}", "--sizes", "300", "--total", "6000", "--epochs", "2", "--memory-epochs", "2"],
    "speedrun.py": ["--root", "{root}", "--rounds", "1", "--steps", "10"],
    "speed.py": ["--root", "{root}", "--epochs", "2", "--batches", "2", "--repeats", "2"],
    "throughput.py": ["--epochs", "2", "--batches", "2", "--batch-size", "4", "--models", "resnet20",
                      "--precisions", "32"],
    "augment.py": ["{pngs}/train", "24", "0", "cpu"],
    "gpu.sh": [],  # with QUICK=1 DEVICE=cpu ROOT={root} below
    "transfer.sh": [],  # on the PNG tree, with the sizes below
}
SH_ENV = {"gpu.sh": {"QUICK": "1", "DEVICE": "cpu", "ROOT": "{root}"},
          "transfer.sh": {"CIFAR": "{pngs}", "WORK": "{tmp}/work", "TRAIN": str(BIN / "cnn-train"),
                          "PRE_IMAGES": "8", "FEW_IMAGES": "4", "PRE_EPOCHS": "1", "SEEDS": "0",
                          "EXTRA": "trainer.fit_to_data=false trainer.epochs=1 trainer.batch_size=8 "
                                   "scheduler.warmup_epochs=0 "
                                   "trainer.limit_train_batches=1 trainer.log_graph=false trainer.log_images=false"}}
CIFAR_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def test_every_benchmark_has_tiny_arguments():
    """A new benchmark must join the smoke test below."""
    shipped = {p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh") and p.name != "common.py"}
    assert shipped == set(TINY_ARGS)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every benchmark run once with its tiny arguments, two at a time (each is one thread, and
    much of each is starting Python and torch, so two share this small machine well)."""
    shared = tmp_path_factory.mktemp("inputs")
    root = shared / "data"
    write_idx(root / "MNIST" / "raw", n_train=6000, n_test=100)  # 5,000 of them: the default val_size
    pngs = _png_tree(shared / "pngs")

    def run(name: str) -> subprocess.CompletedProcess:
        tmp = tmp_path_factory.mktemp(name.replace(".", "_"))
        fill = lambda text: text.format(root=root, tmp=tmp, pngs=pngs)  # noqa: E731
        env = {**ONE_THREAD, **NO_GPU, "PYTHON": sys.executable}
        if name.endswith(".sh"):
            command = ["bash", str(BENCHMARKS / name)]
            env.update({key: fill(value) for key, value in SH_ENV[name].items()})
        else:
            command = [sys.executable, str(BENCHMARKS / name), *(fill(arg) for arg in TINY_ARGS[name])]
        return subprocess.run(command, cwd=tmp, env=user_env(env), capture_output=True, text=True, timeout=600)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(TINY_ARGS, pool.map(run, TINY_ARGS)))


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("name", list(TINY_ARGS))
def test_benchmark_runs(name: str, finished: dict[str, subprocess.CompletedProcess]):
    proc = finished[name]
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stdout + proc.stderr


def _png_tree(root: Path) -> Path:
    """CIFAR-10's layout in miniature: train/ and test/ class folders of 16x16 RGB PNGs."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for c in CIFAR_CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root
