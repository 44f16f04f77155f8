"""Training throughput of cnn-train's bigger architectures on random 32x32 data
(dataset=random), in float32 and bf16 autocast, without and with channels_last.

    python benchmarks/throughput.py [--device cuda] [--models resnet20 vgg11_bn] [--precisions 32 bf16]
                                    [--epochs 3] [--batches 100] [--batch-size 128]

Each setting is its own cnn-train run; img/s is cnn-train's own training throughput
averaged over the epochs after the first (the first warms up kernels and cuDNN's choice).
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cnn_train, steady_img_per_s


def img_per_s(model: str, device: str, precision: str, channels_last: bool, args: argparse.Namespace,
              run_dir: Path) -> float:
    """One cnn-train run; its mean training img/s after the first epoch."""
    few = args.batch_size  # validation and test images: their evaluation is not what is timed
    cmd = [cnn_train(), f"model={model}", "dataset=random", f"dataset.val_size={few}",
           f"dataset.num_images=[{args.batches * args.batch_size + few},{few}]",
           f"trainer.device={device}", f"trainer.precision={precision}", f"trainer.channels_last={channels_last}",
           f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}", "trainer.progress=false",
           "scheduler=none", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return steady_img_per_s(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg11_bn"])
    parser.add_argument("--precisions", nargs="+", default=["32", "bf16"], choices=["32", "bf16", "16"])
    parser.add_argument("--epochs", type=int, default=3, help="at least 2: the first is warm-up")
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is warm-up, not counted)")

    print(f"{'on ' + args.device:12}{'':10}{'img/s':>10}{'+ channels_last':>17}")
    with tempfile.TemporaryDirectory(prefix="cnn-throughput-") as tmp:
        for model, precision in itertools.product(args.models, args.precisions):
            rates = [img_per_s(model, args.device, precision, cl, args, Path(tmp) / f"{model}-{precision}-{cl}")
                     for cl in (False, True)]
            label = {"32": "float32", "bf16": "bf16", "16": "float16"}[precision]
            print(f"{model:12}{label:10}{rates[0]:10.0f}{rates[1]:11.0f} ({rates[1] / rates[0]:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
