"""How fast the data side is: seconds to load a dataset into tensors, the memory it holds,
and batches per second of the iterator alone against the training step rate.

    python benchmarks/data_pipeline.py dataset=mnist dataset.root=../shared/data

Arguments are Hydra overrides of configs/train.yaml.
"""

from __future__ import annotations

import resource
import sys
import time

import torch
from hydra import compose, initialize_config_module

from cnn_cli import data as data_mod
from cnn_cli.builder import build_from_config
from cnn_cli.cli import register
from cnn_cli.runtime import resolve_device

register()  # the schemas and resolvers the configs name, as every entry point does first


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(overrides: list[str]) -> None:
    with initialize_config_module(config_module="cnn_cli.configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    device = resolve_device(cfg.trainer.device)
    batch_size = cfg.trainer.batch_size
    rss_before = peak_rss_mb()
    started = time.perf_counter()
    data = data_mod.load(cfg.dataset, device)
    load_seconds = time.perf_counter() - started
    rss_loaded = peak_rss_mb()
    held = sum(t.numel() * t.element_size() for s in (data.train, data.val, data.test) for t in (s.images, s.labels))

    aug = cfg.dataset.augment
    plan = data_mod.epoch_plan(len(data.train), cfg.seed, 0, aug.crop_padding, aug.flip)
    started = time.perf_counter()
    count = sum(1 for _ in data_mod.train_batches(data, batch_size, plan, aug.crop_padding))
    if device.type == "cuda":
        torch.cuda.synchronize()
    batches_per_s = count / (time.perf_counter() - started)

    model = build_from_config(cfg).model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps, started = 0, None
    for images, labels in data_mod.train_batches(data, batch_size, plan, aug.crop_padding, stop=60):
        if steps == 10:  # the first steps warm up kernels and allocators
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    loss.item()
    steps_per_s = (steps - 10) / (time.perf_counter() - started)

    sizes = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test"
    print(f"dataset              {data.name} ({sizes}) on {device}")
    print(f"load into tensors    {load_seconds:.2f} s")
    print(f"tensors held         {held / 2**20:.1f} MiB; peak RSS grew {rss_loaded - rss_before:.0f} MiB while loading "
          f"(process peak {peak_rss_mb():.0f} MiB, most of it torch itself)")
    print(f"batch iterator       {batches_per_s:,.0f} batches/s of {batch_size} "
          f"(crop {aug.crop_padding}, flip {aug.flip})")
    print(f"training step rate   {steps_per_s:,.1f} steps/s ({cfg.model.name}, batch {batch_size})")
    print(f"iterator / steps     {batches_per_s / steps_per_s:,.0f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
