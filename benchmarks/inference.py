"""Inference on the CPU: ONNX Runtime on the file cnn-export writes against PyTorch eager,
latency at batch 1 and throughput at batch 256, for lenet5 (1 x 28 x 28) and resnet20
(3 x 32 x 32).

    python benchmarks/inference.py [--models lenet5 resnet20] [--threads N] [--repeats 200]

Each model is built untrained (timing does not depend on the weights), saved as a
checkpoint and exported with cnn-export's own code (batchnorm folded, normalisation baked
in, verified). The contenders take the same raw uint8 batch: PyTorch eager as trained
(normalise, then the model with its batchnorm layers, as cnn-predict runs it), PyTorch
eager on the folded network that was exported, and ONNX Runtime on the .onnx file. Times
are medians over --repeats runs after a warm-up, with --threads threads for both runtimes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnxruntime
import torch
from hydra import compose, initialize_config_module

from cnn_cli import checkpoint, data
from cnn_cli.builder import build_from_config
from cnn_cli.cli import register
from cnn_cli.trained import load_trained
from cnn_cli.export import Deployable, run_export
from cnn_cli.fuse import fuse_batchnorm

register()  # the schemas and resolvers the configs name, as every entry point does first

DATASETS = {"lenet5": "mnist_sample", "resnet20": "random"}


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):  # warm-up: allocators, kernel choice, ORT's first-run work
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def exported(model: str, folder: Path) -> tuple[Path, Path]:
    """A checkpoint of the untrained model and the ONNX file cnn-export makes of it."""
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", f"dataset={DATASETS[model]}"])
    data.resolve(cfg.dataset)  # as cnn-train does before it records the config (random's classes are named then)
    state = {key: {} for key in checkpoint.FORMAT}
    state.update(finished=True, model=build_from_config(cfg).model.state_dict(),
                 config=checkpoint.recorded_config(cfg))
    ckpt = folder / f"{model}.pt"
    checkpoint.save(state, ckpt)
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):  # cnn-export's own defaults
        report = run_export(compose("export", overrides=[f"checkpoint={ckpt}", "format=onnx"]))
    print(f"{model}: exported, largest logit difference {report['max_abs_difference']:.1e}")
    return ckpt, Path(report["output"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            ckpt, onnx_file = exported(model, Path(tmp))
            trained = load_trained(ckpt)
            folded = Deployable(fuse_batchnorm(trained.model), trained, preprocess=True).eval()
            session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
            shape = tuple(trained.config.dataset.input_shape)
            for batch in (1, 256):
                raw = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8)
                feed = {"images": raw.numpy()}
                with torch.inference_mode():
                    contenders = {
                        "PyTorch eager, as trained": lambda: trained.model(trained.normalize(raw)),
                        "PyTorch eager, batchnorm folded": lambda: folded(raw),
                        "ONNX Runtime": lambda: session.run(["logits"], feed),
                    }
                    for name, run in contenders.items():
                        seconds = median_seconds(run, args.repeats if batch == 1 else max(3, args.repeats // 10))
                        rows.append((model, batch, name, seconds))
    print(f"\n{args.threads} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print("| model | contender | batch 1 latency (ms) | batch 256 throughput (img/s) |")
    print("|---|---|---:|---:|")
    for model in args.models:
        for name in dict.fromkeys(r[2] for r in rows):
            one, many = (s for m, b, n, s in sorted(rows, key=lambda r: r[1]) if m == model and n == name)
            print(f"| {model} | {name} | {one * 1e3:.3f} | {256 / many:,.0f} |")


if __name__ == "__main__":
    main()
