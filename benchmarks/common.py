"""What the benchmark scripts share."""

from __future__ import annotations

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
