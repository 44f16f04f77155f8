"""Build the BasicMotions dataset bundled with cnn-cli (cnn_cli/assets/basic_motions.npz).

Why this exists: cnn-cli trains 1-D networks on a real sensor dataset with no download.
BasicMotions (UEA/UCR time-series classification archive) is smartwatch IMU data: 3-axis
accelerometer + 3-axis gyroscope, 10 s at 10 Hz (6 channels x 100 steps), four activities,
40 training and 40 test recordings. The archive's .ts files ship inside the sktime wheel on
PyPI (sktime/datasets/data/BasicMotions/); this script reads them from that wheel (sktime
itself is never imported or needed at run time) and writes float32 arrays with fixed zip
timestamps, so two runs give the same sha256. It prints the per-channel mean and std of the
training split, which configs/dataset/basic_motions.yaml normalises with.

Only numpy and the standard library are used.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from make_mnist_sample import download_wheel, write_asset

WHEEL = "sktime==1.2.0"  # pinned: the bytes written depend only on this wheel's .ts files
MEMBER = "sktime/datasets/data/BasicMotions/BasicMotions_{}.ts"
CHANNELS, STEPS, PER_SPLIT = 6, 100, 40
MAX_BYTES = 512 * 1024
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "cnn_cli" / "assets" / "basic_motions.npz"


def parse_ts(text: str) -> tuple[list[str], np.ndarray, list[str]]:
    """A .ts file -> (its class names in header order, (N, 6, 100) float64 series, N labels).
    Header lines start with # or @; each data line is 6 comma-separated series and the
    label, separated by colons."""
    classes: list[str] = []
    series, labels = [], []
    in_data = False
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("@classlabel"):
            classes = line.split()[2:]
        elif line.lower() == "@data":
            in_data = True
        elif in_data:
            *dims, label = line.split(":")
            rows = [np.array(d.split(","), dtype=np.float64) for d in dims]
            if len(rows) != CHANNELS or any(len(r) != STEPS for r in rows):
                raise SystemExit(f"a series of shape {[len(r) for r in rows]}, want {CHANNELS} x {STEPS}")
            series.append(np.stack(rows))
            labels.append(label)
    return classes, np.stack(series), labels


def read_split(wheel: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    with zipfile.ZipFile(wheel) as zf:
        classes, series, names = parse_ts(zf.read(MEMBER.format(split)).decode("utf-8"))
    if series.shape != (PER_SPLIT, CHANNELS, STEPS) or not np.isfinite(series).all():
        raise SystemExit(f"{split}: series of shape {series.shape} (finite: {np.isfinite(series).all()}), "
                         f"want {(PER_SPLIT, CHANNELS, STEPS)}, all finite")
    labels = np.array([classes.index(n) for n in names], dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    if len(classes) != 4 or not np.all(counts == PER_SPLIT // 4):
        raise SystemExit(f"{split}: classes {classes} with counts {counts.tolist()}, want 4 x {PER_SPLIT // 4}")
    return classes, series.astype(np.float32), labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"sktime wheel to read; if omitted, `pip download --no-deps {WHEEL}` fetches it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output .npz (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(WHEEL, Path(tmp))
        classes, train_x, train_y = read_split(wheel, "TRAIN")
        test_classes, test_x, test_y = read_split(wheel, "TEST")
        print(f"wheel: {wheel.name}  classes: {classes}")
    if test_classes != classes:
        raise SystemExit(f"the splits name their classes differently: {classes} vs {test_classes}")

    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    mean = train_x.astype(np.float64).mean(axis=(0, 2))
    std = train_x.astype(np.float64).std(axis=(0, 2))
    print(f"classes: [{', '.join(c.lower() for c in classes)}]")
    print(f"mean: [{', '.join(f'{m:.4f}' for m in mean)}]")
    print(f"std: [{', '.join(f'{s:.4f}' for s in std)}]")
    write_asset(args.out, arrays, MAX_BYTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
