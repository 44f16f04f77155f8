"""Is channels-last worth it for each sample rank? Times training steps of a 2-D and a 3-D
network with contiguous batches and weights against channels_last (4-D) or
channels_last_3d (5-D), in one process. The answer for 5-D batches is
cnn_cli.runtime.CHANNELS_LAST: add 5 there if channels_last_3d wins on your device.

    python benchmarks/memory_format.py [--device cuda] [--precision bf16] [--steps 30] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from cnn_cli import runtime
from cnn_cli.builder import build_from_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"
# (model config, one sample's shape, the channels-last format for its batches)
CASES = [("resnet20", [3, 32, 32], torch.channels_last), ("voxel_cnn3d", [1, 16, 16, 16], torch.channels_last_3d),
         ("voxel_cnn3d", [1, 32, 32, 32], torch.channels_last_3d),
         ("voxel_cnn3d", [4, 32, 32, 32], torch.channels_last_3d)]


def img_per_s(model_name: str, shape: list[int], fmt: torch.memory_format, args: argparse.Namespace) -> float:
    """Training samples per second over args.steps steps, after 5 warm-up steps."""
    device = torch.device(args.device)
    cfg = OmegaConf.create({"model": OmegaConf.load(CONFIGS / f"{model_name}.yaml"),
                            "dataset": {"name": "random", "num_classes": 10, "input_shape": shape}})
    model = build_from_config(cfg).model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch_size, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def step() -> None:
        with runtime.autocast(device, args.precision):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32", choices=runtime.PRECISIONS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each format; the best counts")
    args = parser.parse_args()
    print(f"{'on ' + args.device:34}{'contiguous':>12}{'channels-last':>15}")
    for model_name, shape, fmt in CASES:
        best = {torch.contiguous_format: 0.0, fmt: 0.0}
        for _ in range(args.repeats):  # alternate, so drifting machine load hits both
            for each in best:
                best[each] = max(best[each], img_per_s(model_name, shape, each, args))
        plain, last = best.values()
        label = f"{model_name} {'x'.join(map(str, shape))}"
        print(f"{label:34}{plain:12.0f}{last:11.0f} ({last / plain:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
