"""Photo augmentation speed: cnn-cli's whole-batch tensor ops against torchvision.transforms.v2
per image in a DataLoader, on the same real PNGs, with the same augmentations (random resized
crop, rotation, colour jitter, normalisation), in images per second (docs/transfer.md, Photo augmentation).

    python benchmarks/augment.py [PNG_FOLDER] [IMAGES] [WORKERS] [DEVICE]

PNG_FOLDER holds class folders of PNGs (default ~/data/cifar10/train); IMAGES of them are used
(default 2000). Rows: (a) cnn-cli: PNGs decoded once into a uint8 tensor (as dataset=imagefolder
caches them), then every epoch augmented batch by batch on DEVICE; (b) v2 in a DataLoader with
WORKERS processes, decoding each PNG every epoch as an ImageFolder pipeline does; (c) v2 on the
decoded tensors, no decoding, no workers: the augmentation alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torchvision
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cnn_cli import augment, data

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
SETTINGS = OmegaConf.create({"crop_padding": 0, "flip": False, "resized_crop_scale": [0.35, 1], "rotate": 10,
                             "brightness": 0.2, "contrast": 0.2, "saturation": 0.2})
BATCH, EPOCHS = 128, 3


def transforms(size: int) -> v2.Compose:
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1), antialias=True), v2.RandomRotation(10),
                       v2.ColorJitter(0.2, 0.2, 0.2), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])


class Pngs(Dataset):
    def __init__(self, files: list[Path], labels: list[int], transform: v2.Compose) -> None:
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = torchvision.io.decode_image(str(self.files[i]), mode=torchvision.io.ImageReadMode.RGB)
        return self.transform(image), self.labels[i]


class Tensors(Dataset):
    def __init__(self, images: torch.Tensor, transform: v2.Compose) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), 0


def rate(epoch) -> float:
    """Images per second over EPOCHS epochs after one to warm up."""
    n = epoch()
    started = time.perf_counter()
    for _ in range(EPOCHS):
        epoch()
    return n * EPOCHS / (time.perf_counter() - started)


def main(folder: Path, count: int, workers: int, device: str) -> None:
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = count // len(classes)
    files = [f for c in classes for f in sorted(c.glob("*.png"))[:per_class]]
    labels = [i for i, c in enumerate(classes) for _ in range(per_class)]
    started = time.perf_counter()
    images = torch.stack([torchvision.io.decode_image(str(f), mode=torchvision.io.ImageReadMode.RGB) for f in files])
    decode_s = time.perf_counter() - started
    size = images.shape[-1]
    on_device, targets = images.to(device), torch.tensor(labels, device=device)

    def ours() -> int:
        for step, b in enumerate(range(0, len(on_device), BATCH)):
            batch = data.normalize(on_device[b:b + BATCH], MEAN, STD)
            out, _ = augment.apply(batch, targets[b:b + BATCH], SETTINGS, MEAN, STD, len(classes), step)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return len(on_device)

    def loader(dataset: Dataset, processes: int):
        batches = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=processes,
                             persistent_workers=processes > 0)

        def epoch() -> int:
            for batch, _ in batches:
                batch.to(device)
            return len(dataset)
        return epoch

    print(f"{len(files)} PNGs ({size}x{size}) from {folder}, batch {BATCH}, {EPOCHS} epochs after one warm-up, "
          f"{torch.get_num_threads()} torch threads")
    rows = [(f"(a) cnn-cli tensor ops on {device}", rate(ours), f"  (+ {decode_s:.1f} s to decode once)"),
            (f"(b) v2 DataLoader, {workers} workers, PNG decode",
             rate(loader(Pngs(files, labels, transforms(size)), workers)), ""),
            ("(c) v2 on decoded tensors, no workers", rate(loader(Tensors(images, transforms(size)), 0)), "")]
    for name, speed, note in rows:
        print(f"{name:40s} {speed:8.0f} img/s{note}")

if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0] if args else "~/data/cifar10/train").expanduser(), int(args[1]) if len(args) > 1 else 2000,
         int(args[2]) if len(args) > 2 else 2, args[3] if len(args) > 3 else "cpu")
