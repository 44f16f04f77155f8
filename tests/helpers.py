"""What many test modules share: the installed commands and how to run one, the smallest real
training run, MNIST files in torchvision's layout, and what a refusal looks like.

Imported by the test modules (`from helpers import ...`); pytest puts this folder on sys.path.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

# the console scripts (cnn-train, ...) pip installed beside the Python that runs the tests
BIN = Path(sys.executable).parent

# for processes run side by side on a small machine: one thread each
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# "no GPU" holds on any machine
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}

# the smallest real training run: the bundled sample (nothing is downloaded), one epoch of two
# steps, one validation batch, and no progress bars in the captured output
TINY = ["dataset=mnist_sample", "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.progress=false"]

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"]


def tiny(*changes: str) -> list[str]:
    """TINY with `changes`: a key TINY sets takes the new value, other keys are added."""
    settings = dict(override.split("=", 1) for override in [*TINY, *changes])
    return [f"{key}={value}" for key, value in settings.items()]


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user runs a command in, without the switches that turn its one-line
    errors into tracebacks (a developer may have them set), and with `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "CNN_CLI_FULL_ERROR")}
    return {**env, **(extra or {})}


def cnn(tool: str, *args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run an installed command (`cnn("cnn-train", "model=lenet5", cwd=...)`) in its own process
    as a user would, its output captured as text. `env` is added to the user's environment;
    with `check` the command must succeed."""
    proc = subprocess.run([str(BIN / tool), *args], cwd=cwd, env=user_env(env), capture_output=True, text=True,
                          timeout=timeout, **kwargs)
    if check:
        assert proc.returncode == 0, f"{tool} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def one_error_line(proc: subprocess.CompletedProcess, after_log: bool = False) -> str:
    """The refusal of bad input, checked and returned: exit status 2, exactly one line on
    stderr, "error: " and a message, and no traceback anywhere.

    after_log: the process trained (and logged to stderr) before it failed; only the lines
    that start with "error:" must then be one."""
    shown = f"exit {proc.returncode}\n--- stdout:\n{proc.stdout[-2000:]}\n--- stderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stdout + proc.stderr, shown
    lines = proc.stderr.splitlines()
    if after_log:
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: ") and lines[0][len("error: "):].strip(), shown
    return lines[0]


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, what: str, timeout: float = 120,
             log: Path | None = None) -> None:
    """Return once `condition()` holds while `proc` runs. The timeout only bounds a failure:
    `what` did not happen in time, or the process ended first."""
    deadline = time.monotonic() + timeout
    tail = lambda: log.read_text()[-3000:] if log else ""  # noqa: E731
    while not condition():
        assert proc.poll() is None, f"{what}: the process exited ({proc.returncode}) first\n{tail()}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{tail()}"
        time.sleep(0.05)


def mnist_images(n: int, test: bool) -> np.ndarray:
    """(n, 28, 28) uint8; pixel [0,0] and [0,1] hold the index, [0,2] says train (0) or test (1)."""
    idx = np.arange(n)
    images = ((idx[:, None, None] * 7 + np.arange(28)[None, :, None] * 3 + np.arange(28)[None, None, :]) % 256)
    images = images.astype(np.uint8)
    images[:, 0, 0] = idx // 256
    images[:, 0, 1] = idx % 256
    images[:, 0, 2] = int(test)
    return images


def write_idx(folder: Path, n_train: int = 300, n_test: int = 50) -> Path:
    """The four uncompressed IDX files torchvision's MNIST family reads from <root>/<Class>/raw/:
    the images of `mnist_images`, labels 0, 1, ..., 9, 0, 1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n, test in (("train", n_train, False), ("t10k", n_test, True)):
        images = mnist_images(n, test)
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        labels = (np.arange(n) % 10).astype(np.uint8)
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return folder
