"""The hand-written anchor for experiment=mnist_speedrun: the same recipe as one plain PyTorch
script written for speed, with nothing but torch and numpy imported.

    python benchmarks/mnist_plain.py --root ../shared/data [--seed 0] [--steps 937] [--batch-size 64] [--threads 1]
                                    [--device cpu]

4 x [3x3 conv without bias -> 2x2 max-pool -> batchnorm -> ReLU] (8, 16, 32, 64 channels),
linear 64 -> 10; SGD, Nesterov 0.9, weight decay 5e-4, written with foreach ops (torch.optim
imports torch._dynamo, a second or more); one-cycle to lr 0.2 with 20% warm-up, then cosine
(torch's OneCycleLR formula); batch 64, label smoothing 0.1, 937 steps (one epoch) on all
60,000 training images; channels_last; test batches of 500. Prints the training seconds (the data
already on the device) and the test accuracy.
benchmarks/speedrun.py times it against cnn-train.
"""

from __future__ import annotations

import argparse
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN, STD = 0.1307, 0.3081


def idx(path: Path) -> torch.Tensor:
    raw = path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return torch.from_numpy(np.frombuffer(bytearray(raw), np.uint8, offset=4 + 4 * ndim).reshape(shape))


def network() -> nn.Sequential:
    layers, channels = [], 1
    for width in (8, 16, 32, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(width),
                   nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, 10))


def one_cycle(step: int, total: int, peak: float, warmup: float = 0.2) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's rate at `step` (cosine, div 25, final div 1e4)."""
    start, end = peak / 25, peak / 25 / 1e4
    turn = warmup * total - 1
    if step <= turn:
        low, high, pct = start, peak, step / turn
    else:
        low, high, pct = peak, end, (step - turn) / (total - 1 - turn)
    return high + (low - high) / 2 * (math.cos(math.pi * pct) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=937)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    raw = Path(args.root) / "MNIST" / "raw"
    train_x, train_y, test_x, test_y = (
        t.to(device) for t in (idx(raw / "train-images-idx3-ubyte").unsqueeze(1),
                               idx(raw / "train-labels-idx1-ubyte").long(),
                               idx(raw / "t10k-images-idx3-ubyte").unsqueeze(1),
                               idx(raw / "t10k-labels-idx1-ubyte").long()))
    model = network().to(device, memory_format=torch.channels_last)
    params = list(model.parameters())
    buffers = [torch.zeros_like(p) for p in params]
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed)).to(device)
    batch = args.batch_size
    started = time.perf_counter()
    for step in range(args.steps):
        i = order[step * batch:(step + 1) * batch]
        x = ((train_x[i].float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), train_y[i], label_smoothing=0.1)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():  # SGD, Nesterov momentum 0.9, weight decay 5e-4, as torch.optim.SGD computes it
            grads = torch._foreach_add([p.grad for p in params], params, alpha=5e-4)
            if step == 0:
                torch._foreach_copy_(buffers, grads)
            else:
                torch._foreach_mul_(buffers, 0.9)
                torch._foreach_add_(buffers, grads)
            torch._foreach_add_(grads, buffers, alpha=0.9)
            torch._foreach_add_(params, grads, alpha=-one_cycle(step, args.steps, 0.2))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"trained {args.steps} steps in {time.perf_counter() - started:.2f} s", flush=True)
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(test_y), 500):
            x = ((test_x[start:start + 500].float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(1) == test_y[start:start + 500]).sum().item()
    print(f"test acc {correct / len(test_y):.4f}", flush=True)


if __name__ == "__main__":
    main()
