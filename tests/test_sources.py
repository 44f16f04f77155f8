"""Dataset sources (cnn_cli/sources.py): each run resolves its source once, an image folder's
tree is walked once, and dataset=arrays reads a user's numpy arrays, refusing hostile ones."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_module
from PIL import Image

from cnn_cli import imagefolder, train
from cnn_cli.cli import register

register()


def composed(*overrides: str):
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides))


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
    cfg = composed("dataset=imagefolder", f"dataset.root={root}", "dataset.workers=1", "dataset.val_size=2",
                   "dataset.test_size=2", "model=lenet5", "trainer.device=cpu")
    train.prepare(cfg, tmp_path / "run", [])
    walks = {folder: listed[folder] for folder in folders}
    file_stats = {file: stats[file] for file in files}
    print("walks", walks, "stats", file_stats)
    assert set(walks.values()) == {1}, walks
    assert set(file_stats.values()) == {1}, file_stats
