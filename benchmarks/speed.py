"""Training speed of cnn-train against (b) a plain PyTorch loop over pre-loaded tensors and
(c) the data pipeline of pytorch/examples mnist/main.py, side by side, same machine, same
LeNet-5, batch 128, SGD, full MNIST, float32.

    python benchmarks/speed.py --root ../shared/data [--device cpu] [--epochs 3] [--batches 200]
                               [--repeats 3] [-- cnn-train overrides]

Each contender runs in its own process, so peak RSS and start-up are its own, and the
contenders take turns (a b c a b c ...), so that a change in a shared machine's load falls
on each alike; the table shows each one's medians. Throughput
is images/s over the epochs after the first (the first warms up kernels and allocators).
The start-up floor is a process that only imports torch and torch._dynamo, which every
optimizer.step() imports: no PyTorch training loop can take its first step sooner.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import cnn_train, steady_img_per_s


def lenet5():
    """LeNet-5 written by hand: the same network as configs/model/lenet5.yaml."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 20, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(20, 50, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(), nn.Linear(2450, 500), nn.ReLU(), nn.Linear(500, 10),
    )


def train_loop(batches_of_epoch, epochs: int, device: str) -> None:
    """The loop both baselines share; prints 'training:' at the first step and JSON at the end."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = lenet5().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    print("training:", flush=True)
    rates = []
    for epoch in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, labels in batches_of_epoch(epoch):
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(labels)
        loss.item()
        rates.append(seen / (time.perf_counter() - started))
    print(json.dumps({"img_per_s": sum(rates[1:]) / len(rates[1:])}), flush=True)


def plain(root: str, epochs: int, batches: int, device: str) -> None:
    """(b) The floor: the whole training set pre-normalised as one float tensor on the
    device, sliced."""
    import torch
    from torchvision import datasets

    train = datasets.MNIST(root, train=True, download=False)
    x = ((train.data.float() / 255 - 0.1307) / 0.3081).unsqueeze(1).to(device)
    y = train.targets.to(device)

    def epoch_batches(epoch: int):
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(epoch)).to(device)
        for b in range(batches):
            idx = order[b * 128:(b + 1) * 128]
            yield x[idx], y[idx]

    train_loop(epoch_batches, epochs, device)


def examples(root: str, epochs: int, batches: int, device: str) -> None:
    """(c) pytorch/examples mnist/main.py's pipeline: per-sample ToTensor and Normalize, a
    DataLoader with one worker (and pinned memory on CUDA), each batch copied to the device."""
    import itertools

    import torch
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train = datasets.MNIST(root, train=True, download=False, transform=transform)
    loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=1,
                                         pin_memory=device.startswith("cuda"))

    def epoch_batches(epoch: int):
        for images, labels in itertools.islice(loader, batches):
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    train_loop(epoch_batches, epochs, device)


def measure(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run one contender; its img/s, peak RSS and seconds from start to the first step."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first_step, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if first_step is None and "training:" in line:
            first_step = time.perf_counter() - started
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit("".join(lines[-20:]) + f"\n{' '.join(cmd)} failed")
    result = {"rss_mb": usage.ru_maxrss / 1024, "first_step_s": first_step}
    reported = [json.loads(line) for line in lines if line.startswith("{")]
    if reported:
        result.update(reported[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first is warm-up")
    parser.add_argument("--batches", type=int, default=200, help="training batches per epoch")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of a b c, interleaved; medians are shown")
    parser.add_argument("--only", choices=["a", "b", "c"], action="append")
    parser.add_argument("overrides", nargs="*", help="extra cnn-train overrides for (a)")
    parser.add_argument("--role", choices=["plain", "examples"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up, not counted)")
    if args.role:
        {"plain": plain, "examples": examples}[args.role](args.root, args.epochs, args.batches, args.device)
        return

    root = str(Path(args.root).resolve())
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"cnn-speed-{os.getpid()}"
    contenders = {key: role for key, role in (("a", None), ("b", "plain"), ("c", "examples"))
                  if key in (args.only or "abc")}
    rounds: dict[str, list[dict[str, float]]] = {key: [] for key in contenders}
    for repeat in range(args.repeats):  # a b c a b c ...: a change in the machine's load hits each alike
        for key, role in contenders.items():
            if role is None:
                run_dir = tmp / f"a{repeat}"
                result = measure([cnn_train(), "model=lenet5", f"dataset.root={root}", "optimizer=sgd",
                                  "scheduler=none", f"trainer.device={args.device}", "trainer.precision=32",
                                  f"trainer.epochs={args.epochs}", "trainer.batch_size=128",
                                  f"trainer.limit_train_batches={args.batches}", "trainer.limit_val_batches=1",
                                  "trainer.progress=false", f"hydra.run.dir={run_dir}", *args.overrides])
                result["img_per_s"] = steady_img_per_s(run_dir)
            else:
                result = measure([sys.executable, __file__, "--role", role, "--root", root, "--device", args.device,
                                  "--epochs", str(args.epochs), "--batches", str(args.batches)])
            rounds[key].append(result)
    results = {key: {name: statistics.median(r[name] for r in runs) for name in runs[0]}
               for key, runs in rounds.items()}
    floor = measure([sys.executable, "-c", "import torch, torch._dynamo; print('training:')"])["first_step_s"]

    names = {"a": "(a) cnn-train", "b": "(b) plain loop, tensors", "c": "(c) examples/mnist DataLoader"}
    print(f"\non {args.device}, medians of {args.repeats} interleaved rounds, load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'':32}{'img/s':>9}{'peak RSS MB':>13}{'first step s':>14}")
    for key, r in results.items():
        print(f"{names[key]:32}{r['img_per_s']:9.0f}{r['rss_mb']:13.0f}{r['first_step_s']:14.1f}")
    if {"a", "b"} <= results.keys():
        print(f"a/b throughput {results['a']['img_per_s'] / results['b']['img_per_s']:.3f}   "
              f"a/b peak RSS {results['a']['rss_mb'] / results['b']['rss_mb']:.3f}")
    if {"a", "c"} <= results.keys():
        print(f"a/c throughput {results['a']['img_per_s'] / results['c']['img_per_s']:.3f}")
    print(f"start-up floor (import torch, torch._dynamo) {floor:.1f} s")

if __name__ == "__main__":
    main()
