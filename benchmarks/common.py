"""What the benchmark scripts share."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path


def cnn_train() -> str:
    """The cnn-train command beside this Python (a venv's bin), else on PATH (as where
    gpu.sh installs with pip --target)."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("cnn-train", path=search)
    if found is None:
        sys.exit("cnn-train not found beside this Python or on PATH: pip install -e . first")
    return found


def steady_img_per_s(run_dir: Path) -> float:
    """A finished cnn-train run's training img/s, averaged over the epochs after the first
    (the first warms up kernels and allocators), from its metrics.json."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return sum(e["img_per_s"] for e in history[1:]) / len(history[1:])
