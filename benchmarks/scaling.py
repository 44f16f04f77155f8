"""Cost as work grows: epoch time against the number of training images, and peak memory
over the epochs of one run (it should stay flat: nothing accumulates).

    python benchmarks/scaling.py --root ../shared/data [--sizes 10000 30000 60000] [--epochs 5]

Runs cnn-train (LeNet-5, batch 128) in a subprocess and reads the process's peak RSS
(VmHWM in /proc, Linux) each time it logs the end of an epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from common import cnn_train


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def train(root: str, images: int, total: int, epochs: int, run_dir: Path) -> tuple[list[dict], list[float]]:
    """Train on `images` of the `total` training images (the rest is the validation split);
    returns the epoch history and the peak RSS after each epoch."""
    cmd = [cnn_train(), "model=lenet5", f"dataset.root={root}", f"dataset.val_size={total - images}",
           f"trainer.epochs={epochs}", "trainer.limit_val_batches=1", "trainer.progress=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        if re.search(r"epoch \d+/\d+ ", line):
            peaks.append(peak_rss_mb(proc.pid))
    if proc.wait() != 0:
        sys.exit("".join(lines[-20:]))
    return json.loads((run_dir / "metrics.json").read_text())["history"], peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 30000, 59000])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per size (the first warms up)")
    parser.add_argument("--total", type=int, default=60000, help="training images in the MNIST files")
    parser.add_argument("--memory-epochs", type=int, default=5, help="epochs of the memory run (smallest size)")
    args = parser.parse_args()
    root = str(Path(args.root).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'train images':>12}{'epoch s':>10}{'s per 10k':>11}{'img/s':>8}")
        for n in args.sizes:
            history, _ = train(root, n, args.total, args.epochs, Path(tmp) / f"n{n}")
            seconds = history[-1]["epoch_seconds"]
            print(f"{n:12,}{seconds:10.1f}{seconds / n * 10000:11.2f}{history[-1]['img_per_s']:8.0f}")
        _, peaks = train(root, args.sizes[0], args.total, args.memory_epochs, Path(tmp) / "memory")
        print("peak RSS MB after each epoch: " + ", ".join(f"{p:.0f}" for p in peaks))
        print(f"last / first: {peaks[-1] / peaks[0]:.3f}")


if __name__ == "__main__":
    main()
