"""Time to accuracy on MNIST: `cnn-train experiment=mnist_speedrun` against the same recipe
as one hand-written PyTorch script (benchmarks/mnist_plain.py), each a whole process timed
from launch to its printed test accuracy, taking turns (A B B A A B ...) so that a shared
machine's changing load, and a trend in it, falls on both alike.

    python benchmarks/speedrun.py --root ../shared/data [--rounds 5] [--seed 0] [--steps 937]
                                  [--batch-size 64] [--device cpu] [-- cnn-train overrides]

Prints each run, then the medians, the ratios cnn-train / script, and the load average
(uptime's 1-minute figure) before and after. Each run's CPU time (user + system) is shown
too: on a busy machine it moves far less with the load than wall time does. The script runs one thread, as written for
speed; cnn-train chooses its own (trainer.num_threads=auto).

The training loop's own seconds are compared too. At a tiny batch (`--batch-size 2 --steps
3000 -- trainer.num_threads=1`) the network's arithmetic nearly vanishes and that ratio is the
host's work a step, which is what bounds a small network's step rate on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cnn_train

ACCURACY = re.compile(r"test acc\s+([0-9.]+)")
TRAINED = re.compile(r"trained \d+ steps in ([0-9.]+) s")  # the script's training loop


def timed(command: list[str], run_dir: Path | None = None) -> tuple[float, float, float, float, float]:
    """Seconds from launch to the printed test accuracy, to the process's exit, the accuracy,
    the process's CPU seconds and its training loop's seconds: the script prints them,
    cnn-train's are in `run_dir`'s metrics.json."""
    used = _cpu_of_children()
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    printed, accuracy, lines = None, None, []
    for line in proc.stdout:
        lines.append(line)
        found = ACCURACY.search(line)
        if found and printed is None:
            printed, accuracy = time.perf_counter() - started, float(found.group(1))
    if proc.wait() != 0 or printed is None:
        sys.exit("".join(lines[-20:]) + f"\n{' '.join(command)} failed ({proc.returncode})")
    exited = time.perf_counter() - started
    if run_dir is None:
        training = float(next(found.group(1) for found in map(TRAINED.search, lines) if found))
    else:
        training = json.loads((run_dir / "metrics.json").read_text())["history"][0]["epoch_seconds"]
    return printed, exited, accuracy, _cpu_of_children() - used, training


def _cpu_of_children() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="../shared/data", help="folder holding MNIST/raw")
    parser.add_argument("--rounds", type=int, default=5, help="A B pairs; medians over them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=937, help="training steps (the recipe's one epoch)")
    parser.add_argument("--batch-size", type=int, default=64, help="the recipe's; 2: the host's work a step")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N: both contenders train there")
    parser.add_argument("overrides", nargs="*", help="extra cnn-train overrides")
    args = parser.parse_args()
    root = str(Path(args.root).resolve())
    script = [sys.executable, str(Path(__file__).with_name("mnist_plain.py")), "--root", root,
              "--seed", str(args.seed), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
              "--device", args.device]
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float, float, float, float]]] = {"cnn-train": [], "script": []}
    with tempfile.TemporaryDirectory(prefix="cnn-speedrun-") as tmp:
        for r in range(args.rounds):
            run_dir = Path(tmp) / str(r)
            cnn = [cnn_train(), "experiment=mnist_speedrun", f"dataset.root={root}", f"seed={args.seed}",
                   f"trainer.limit_train_batches={args.steps}", f"trainer.batch_size={args.batch_size}",
                   "trainer.progress=false", f"trainer.device={args.device}", f"hydra.run.dir={run_dir}",
                   *args.overrides]
            pair = [("cnn-train", cnn, run_dir), ("script", script, None)]
            for name, command, folder in pair if r % 2 == 0 else pair[::-1]:  # A B B A ...: a load trend evens out
                runs[name].append(timed(command, folder))
                printed, exited, accuracy, cpu, training = runs[name][-1]
                print(f"round {r + 1} {name:9} accuracy printed {printed:6.2f} s, exit {exited:6.2f} s, CPU {cpu:6.2f} "
                      f"s, training {training:6.2f} s, test acc {accuracy:.4f}, load {os.getloadavg()[0]:.2f}",
                      flush=True)
    medians = {name: [statistics.median(run[i] for run in results) for i in range(5)]
               for name, results in runs.items()}
    print(f"\nmedians of {args.rounds} interleaved rounds, load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    for name, (printed, exited, accuracy, cpu, training) in medians.items():
        print(f"{name:9}  to accuracy {printed:6.2f} s   to exit {exited:6.2f} s   CPU {cpu:6.2f} s   training "
              f"{training:6.2f} s   test acc {accuracy:.4f}")
    ours, theirs = medians["cnn-train"], medians["script"]
    print(f"ratio cnn-train / script, to accuracy: {ours[0] / theirs[0]:.3f}   to exit: {ours[1] / theirs[1]:.3f}   "
          f"CPU: {ours[3] / theirs[3]:.3f}   training: {ours[4] / theirs[4]:.3f}")


if __name__ == "__main__":
    main()
