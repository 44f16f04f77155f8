"""dataset=imagefolder against torchvision's ImageFolder + DataLoader, on a generated tree of
JPEGs (128 x 128, 10 classes) trained at 3 x 64 x 64.

    python benchmarks/imagefolder.py [--images 20000] [--tree /tmp/cnn_bench_jpegs] [--model mlp] [--epochs 3]

Measures, each training run in its own process:
  - decode throughput into the cache with 1 worker and with all cores;
  - cnn-train's first run (decoding included) and a second run on the cache: time from launch
    to the end of the first epoch, the steady epoch time, and launch to the first step;
  - the same model trained by torchvision's ImageFolder + DataLoader (num_workers=2, Resize,
    CenterCrop, RandomHorizontalFlip, ToTensor, Normalize);
  - the cache read from its memory map (dataset.max_memory_gb far below its size): epoch time
    and peak RSS, against the in-memory run's;
  - the floor: a process that only imports torch.
The tree is generated once (outside any repository) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import cnn_train

SIZE, TRAIN_SIZE, CLASSES = 128, 64, 10


def make_tree(root: Path, count: int) -> None:
    """count JPEGs, 128 x 128, a class each: smooth colour fields with noise (compress like photos)."""
    import numpy as np
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == count:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIZE)[None, :, None]
    for i in range(count):
        c = i % CLASSES
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (rng.random(3) * 0.5 + c / CLASSES * 0.5) * 255
        pixels = base * (0.6 + 0.4 * ramp) + rng.normal(0, 20, (SIZE, SIZE, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def run(command: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run, return (result, launch time (epoch seconds), peak RSS in MB of that process alone)."""
    launched = time.time()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.exit(f"{' '.join(command)} failed ({code}):\n{output[-3000:]}")
    return subprocess.CompletedProcess(command, code, output), launched, usage.ru_maxrss / 1024


def log_time(text: str, pattern: str) -> float:
    """The timestamp (epoch seconds) of the first log line matching pattern."""
    for line in text.splitlines():
        if re.search(pattern, line):
            stamp = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]", line).group(1)
            return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    raise SystemExit(f"no log line matches {pattern!r}:\n{text[-2000:]}")


def cnn_run(tree: Path, cache: Path, work: Path, name: str, args: argparse.Namespace, *extra: str) -> dict:
    command = [cnn_train(), "dataset=imagefolder", f"dataset.root={tree}", f"dataset.cache_dir={cache}",
               f"dataset.input_shape=[3,{TRAIN_SIZE},{TRAIN_SIZE}]", f"model={args.model}",
               f"trainer.epochs={args.epochs}", "trainer.progress=false", f"hydra.run.dir={work / name}", *extra]
    proc, launched, rss = run(command, work)
    history = json.loads((work / name / "metrics.json").read_text())["history"]
    return {"first_epoch_from_launch_s": log_time(proc.stdout, r"epoch 1/\d+ ") - launched,
            "first_step_from_launch_s": log_time(proc.stdout, r"training: ") - launched,
            "steady_epoch_s": sum(e["epoch_seconds"] for e in history[1:]) / len(history[1:]),
            "peak_rss_mb": rss, "reused": "image cache reused" in proc.stdout, "command": " ".join(command)}


def baseline(tree: str, model: str, epochs: int) -> None:
    """torchvision ImageFolder + DataLoader training the same network; prints JSON (run as a child)."""
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_module
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from cnn_cli.builder import build_from_config
    from cnn_cli.cli import register

    register()
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "dataset=random", "dataset.num_images=[1,1]",
                                          f"dataset.input_shape=[3,{TRAIN_SIZE},{TRAIN_SIZE}]"])
    torch.manual_seed(0)
    net = build_from_config(cfg).model
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    transform = transforms.Compose([transforms.Resize(TRAIN_SIZE), transforms.CenterCrop(TRAIN_SIZE),
                                    transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize([0.5] * 3, [0.25] * 3)])
    loader = DataLoader(datasets.ImageFolder(tree, transform=transform), batch_size=128, shuffle=True,
                        num_workers=2, drop_last=True, persistent_workers=False)
    print(json.dumps({"event": "training", "t": time.time()}), flush=True)
    for epoch in range(epochs):
        started = time.perf_counter()
        for images, labels in loader:
            loss = F.cross_entropy(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        print(json.dumps({"event": "epoch", "t": time.time(), "seconds": time.perf_counter() - started}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "cnn_bench_jpegs")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-memory-gb", type=float, default=0.05)
    parser.add_argument("--baseline", help=argparse.SUPPRESS)  # the child process's mode
    args = parser.parse_args()
    if args.baseline:
        return baseline(args.baseline, args.model, args.epochs)

    started = time.perf_counter()
    make_tree(args.tree, args.images)
    print(f"tree: {args.images} JPEGs {SIZE}x{SIZE} in {args.tree} ({time.perf_counter() - started:.0f} s)", flush=True)
    results: dict = {"images": args.images, "cores": os.cpu_count(), "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from omegaconf import OmegaConf

        from cnn_cli import imagefolder

        for workers in (1, os.cpu_count()):  # decode throughput, in this process, into a fresh cache
            cfg = OmegaConf.create({"root": str(args.tree), "cache_dir": str(work / f"decode{workers}"),
                                    "input_shape": [3, TRAIN_SIZE, TRAIN_SIZE], "resize": imagefolder.images.RESIZE[0],
                                    "workers": workers, "skip_bad": True})
            listing = imagefolder.scan(cfg)
            t = time.perf_counter()
            imagefolder.open_cache(cfg, listing)
            results[f"decode_img_per_s_{workers}_workers"] = len(listing.files) / (time.perf_counter() - t)
            rate = results[f"decode_img_per_s_{workers}_workers"]
            print(f"decode, {workers} worker(s): {rate:,.0f} img/s", flush=True)
        cache = work / "cache"
        results["cnn_train_first_run"] = cnn_run(args.tree, cache, work, "first", args)
        print("first run", results["cnn_train_first_run"], flush=True)
        results["cnn_train_cached"] = cnn_run(args.tree, cache, work, "cached", args)
        print("cached run", results["cnn_train_cached"], flush=True)
        results["cnn_train_mapped"] = cnn_run(args.tree, cache, work, "mapped", args,
                                              f"dataset.max_memory_gb={args.max_memory_gb}")
        print("mapped run", results["cnn_train_mapped"], flush=True)
        results["cache_mb"] = sum(p.stat().st_size for p in cache.glob("*.npy")) / 1e6
        proc, launched, rss = run([sys.executable, __file__, "--baseline", str(args.tree), "--model", args.model,
                                   "--epochs", str(args.epochs)], work)
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        epochs = [e for e in events if e["event"] == "epoch"]
        results["dataloader"] = {"first_epoch_from_launch_s": epochs[0]["t"] - launched,
                                 "first_step_from_launch_s": events[0]["t"] - launched,
                                 "steady_epoch_s": sum(e["seconds"] for e in epochs[1:]) / len(epochs[1:]),
                                 "peak_rss_mb": rss}
        print("dataloader", results["dataloader"], flush=True)
        _, launched, _ = run([sys.executable, "-c", "import torch"], work)
        results["import_torch_s"] = time.time() - launched
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
